"""Decoding with a KV cache: token-identical to transformers' greedy `generate`, batched rows
equal single rows, one compile each for prefill and decode, seeded sampling, stops, CLI."""

import shutil

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from checkpoint_factory import WORDS, imported_checkpoint, own_checkpoint  # noqa: E402

from llm_jax.cli import main  # noqa: E402
from llm_jax.data.chat_format import make_template  # noqa: E402
from llm_jax.errors import UserError  # noqa: E402
from llm_jax.infer.chat import chat_prompt  # noqa: E402
from llm_jax.infer.completion import complete  # noqa: E402
from llm_jax.infer.loading import load_model  # noqa: E402
from llm_jax.infer.sampling import SamplingOptions, filter_top_k, filter_top_p  # noqa: E402
from llm_jax.config import ModelConfig  # noqa: E402
from llm_jax.model import Transformer, init_params  # noqa: E402
from llm_jax.model.kv_cache import cache_shardings, init_cache  # noqa: E402

PROMPTS = [[1, 5, 9, 33, 41], [1, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19], [1, 20, 30]]
NEW = 16


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """(our checkpoint dir, its transformers model, the loaded model, a Generator)."""
    ckpt, hf = imported_checkpoint(tmp_path_factory.mktemp("hf"))
    model = load_model(ckpt)
    return ckpt, hf, model, model.generator(length_bucket=16)


def test_cached_logits_equal_the_full_forward_pass_with_ablation_switches():
    # The default switches are covered by the comparison with transformers below.
    config = ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                         mlp_dim=48, max_seq_len=32, position="learned", norm="layernorm",
                         mlp="gelu", qk_norm=True, remat="full", tie_embeddings=True,
                         sliding_window=4, global_every=2, attn_softcap=3.0)
    params = jax.jit(init_params, static_argnums=0)(config, jax.random.key(0))
    model = Transformer(config)
    forward = jax.jit(lambda tokens: model.apply({"params": params}, tokens))
    cached = jax.jit(lambda tokens, cache: model.apply({"params": params}, tokens, cache=cache))
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, 64)
    full = forward(tokens)
    logits, cache = cached(tokens[:, :7], init_cache(config, 2, 16))
    steps = [logits]
    for t in range(7, 12):
        logits, cache = cached(tokens[:, t:t + 1], cache)
        steps.append(logits)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)
    assert int(cache.index) == 12 and cache.k.shape == (2, 2, 16, 2, 8)


def hf_greedy(hf, prompts, eos):
    """transformers' batched greedy generation with left padding, cut after each row's EOS."""
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                          max_new_tokens=NEW, eos_token_id=eos, pad_token_id=0)
    rows = []
    for row in out[:, width:].tolist():
        rows.append(row[:row.index(eos) + 1] if eos in row else row)
    return rows


def test_greedy_is_token_identical_to_transformers(imported):
    _, hf, _, generator = imported
    options = SamplingOptions(max_new_tokens=NEW)
    # An EOS that the model really produces (fifth token of the first row), so rows end early.
    eos = hf_greedy(hf, PROMPTS[:1], eos=-1)[0][4]
    expected = [hf_greedy(hf, [p], eos)[0] for p in PROMPTS]
    assert any(row[-1] == eos and len(row) < NEW for row in expected)
    assert hf_greedy(hf, PROMPTS, eos) == expected  # transformers: batched == single
    default_eos, generator.eos = generator.eos, jax.numpy.asarray([eos], jax.numpy.int32)
    try:
        assert generator.generate(PROMPTS, options) == expected
        assert [generator.generate([p], options)[0] for p in PROMPTS] == expected
    finally:
        generator.eos = default_eos


def test_prefill_and_decode_compile_once(imported):
    generator = imported[2].generator(length_bucket=16)
    for prompts, options in [
        ([[1, 4, 5], [1, 6]], SamplingOptions(max_new_tokens=5)),
        ([[1, 8, 9, 10], [1, 3, 4, 5, 6, 7]], SamplingOptions(max_new_tokens=9, temperature=0.7)),
        ([[1] * 15, [1, 2]], SamplingOptions(max_new_tokens=3, top_k=5, top_p=0.8, seed=1)),
    ]:
        generator.generate(prompts, options)
    assert generator.compiled_counts() == (1, 1)


def test_sampling_is_seeded_and_reduces_to_greedy(imported):
    *_, generator = imported
    prompts = PROMPTS[:2]

    def sample(**kw):
        return generator.generate(prompts, SamplingOptions(max_new_tokens=12, **kw))

    greedy = sample()
    assert sample(temperature=1.5, seed=3) == sample(temperature=1.5, seed=3)
    assert sample(temperature=1.5, seed=3) != sample(temperature=1.5, seed=4)
    assert sample(temperature=1.5, top_k=1, seed=5) == greedy
    assert sample(temperature=1.5, top_p=1e-6, seed=5) == greedy


@pytest.mark.parametrize("top_k, top_p", [(5, 1.0), (0, 0.6), (20, 0.9)])
def test_top_k_and_top_p_keep_the_tokens_transformers_keeps(top_k, top_p):
    logits = np.random.RandomState(top_k).randn(3, 50).astype(np.float32) * 2
    ours = np.asarray(filter_top_p(filter_top_k(jax.numpy.asarray(logits), top_k), top_p))
    theirs = torch.tensor(logits)
    if top_k:
        theirs = transformers.TopKLogitsWarper(top_k)(None, theirs)
    if top_p < 1:
        theirs = transformers.TopPLogitsWarper(top_p)(None, theirs)
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(theirs.numpy()))


def test_sharded_cache_decodes_the_same(imported):
    _, _, model, generator = imported
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "tensor"))
    rules = (("act_batch", "data"), ("act_kv_heads", "tensor"), ("act_heads", "tensor"))
    params = jax.device_put(model.params, NamedSharding(mesh, PartitionSpec()))
    sharded = model.generator(length_bucket=16, mesh=mesh, rules=rules)
    sharded.params = params
    options = SamplingOptions(max_new_tokens=8)
    prompts = PROMPTS + [[1, 2, 3, 4]]
    assert sharded.generate(prompts, options) == generator.generate(prompts, options)
    spec = cache_shardings(mesh, rules).k.spec
    assert tuple(spec) == (None, "data", None, "tensor", None)


def test_stop_strings_and_eos_end_text(imported):
    _, _, model, generator = imported
    full = complete(generator, model.tokenizer, ["w5 w9 w33"], SamplingOptions(max_new_tokens=12))
    words = full[0].text.split()
    stop = words[3]
    cut = complete(generator, model.tokenizer, ["w5 w9 w33"],
                   SamplingOptions(max_new_tokens=12, stop=(stop,)))[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full[0].text[:full[0].text.index(stop)]


def test_cli_generate_and_chat_on_imported_model(imported, capsys):
    ckpt = imported[0]
    assert main(["generate", "--checkpoint", str(ckpt), "--prompt", "w5 w9 w33",
                 "--max-new-tokens", "6"]) == 0
    text = capsys.readouterr().out.strip()
    assert text.startswith("w5 w9 w33") and all(w in WORDS for w in text.split())
    assert main(["generate", "--checkpoint", str(ckpt), "--prompt", "w5 w9", "--prompt", "w7",
                 "--chat", "--temperature", "0.9", "--top-k", "10", "--top-p", "0.9",
                 "--seed", "2", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.count("### ") == 2


def test_cli_generate_on_own_checkpoint(tmp_path, capsys):
    ckpt = own_checkpoint(tmp_path / "own")
    assert main(["generate", "--checkpoint", str(ckpt), "--prompt", "The quick brown",
                 "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.startswith("The quick brown")
    tokenizer = load_model(ckpt).tokenizer
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    ids, stop = chat_prompt(tokenizer, messages)
    chatml = make_template("chatml", tokenizer)  # as SFT encoded its conversations
    assert ids == chatml.encode_prompt(messages).tolist() and stop == ("<|im_end|>",)
    assert chatml.render(messages, add_generation_prompt=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n")


def test_chat_uses_the_tokenizers_own_template(imported):
    tokenizer = imported[2].tokenizer
    assert chat_prompt(tokenizer, [{"role": "user", "content": "w5"}]) == (
        tokenizer.encode("user w3 w5 w4 assistant w3", bos=False), ())


@pytest.mark.parametrize("prompt, message", [
    ("w5 " * 200, "prompt 0 has 201 tokens but the model's context"),
    ("   ", "prompt 0 is empty"),
])
def test_bad_prompts_are_clear_errors(imported, capsys, prompt, message):
    ckpt, _, model, generator = imported
    with pytest.raises(UserError, match=message):
        complete(generator, model.tokenizer, [prompt], SamplingOptions())
    assert main(["generate", "--checkpoint", str(ckpt), "--prompt", prompt]) == 2
    assert message in capsys.readouterr().err


def test_checkpoint_without_tokenizer_is_a_clear_error(imported, tmp_path, capsys):
    bare = shutil.copytree(imported[0], tmp_path / "bare")
    shutil.rmtree(bare / "tokenizer")
    assert main(["generate", "--checkpoint", str(bare), "--prompt", "hi"]) == 2
    assert "has no tokenizer" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_k=-2),
                                 dict(max_new_tokens=0)])
def test_bad_sampling_options_are_clear_errors(bad):
    with pytest.raises(UserError):
        SamplingOptions(**bad)
