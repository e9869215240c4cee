"""Hugging Face Llama interop: our logits equal transformers' for imported and exported models."""

import dataclasses
import io
import json

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from llm_jax import checkpoint  # noqa: E402
from llm_jax.cli import main  # noqa: E402
from llm_jax.convert.hf_export import write_hf_checkpoint  # noqa: E402
from llm_jax.convert import hf_import  # noqa: E402
from llm_jax.convert.hf_import import import_hf_checkpoint, read_hf_checkpoint  # noqa: E402
from llm_jax.errors import UserError  # noqa: E402
from llm_jax.model import Transformer  # noqa: E402
from llm_jax.parallel.launch import launch  # noqa: E402

LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 32}

CONFIGS = {
    "mha-tied": dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True),
    "gqa-untied-theta-eps": dict(num_attention_heads=8, num_key_value_heads=2,
                                 tie_word_embeddings=False, rope_theta=500000.0,
                                 rms_norm_eps=1e-6),
    "mqa-llama3-scaling": dict(num_attention_heads=4, num_key_value_heads=1,
                               tie_word_embeddings=False, rope_scaling=LLAMA3_SCALING,
                               rope_theta=50000.0),
    "gqa-wide-head-dim": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                              tie_word_embeddings=False),
}


def hf_model(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    settings = dict(vocab_size=101, hidden_size=64, num_hidden_layers=2, intermediate_size=112,
                    max_position_embeddings=256)
    settings.update(overrides)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**settings)).eval()
    # Random norms, so that a mix-up of the two norm weights would show in the logits.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
    return model


def hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor(np.asarray(tokens))).logits.numpy()


def our_logits(model_config, params, tokens):
    return np.asarray(Transformer(model_config).apply({"params": params}, tokens))


TOKENS = np.random.RandomState(0).randint(0, 101, (2, 80))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_imported_logits_equal_transformers(tmp_path, name):
    model = hf_model(**CONFIGS[name])
    model.save_pretrained(tmp_path)
    model_config, params = read_hf_checkpoint(tmp_path)
    diff = np.abs(our_logits(model_config, params, TOKENS) - hf_logits(model, TOKENS)).max()
    assert diff < 1e-4, diff


@pytest.mark.parametrize("name", ["mha-tied", "mqa-llama3-scaling"])
def test_export_loads_in_transformers_with_equal_logits(tmp_path, name):
    model_config, params = read_hf_checkpoint(_saved(tmp_path / "src", **CONFIGS[name]))
    out = write_hf_checkpoint(model_config, params, tmp_path / "exported")
    loaded, info = transformers.LlamaForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    diff = np.abs(hf_logits(loaded.eval(), TOKENS) - our_logits(model_config, params, TOKENS))
    assert diff.max() < 1e-4


def test_export_then_import_is_exact_also_when_sharded(tmp_path):
    model_config, params = read_hf_checkpoint(_saved(tmp_path / "src", **CONFIGS["gqa-untied-theta-eps"]))
    out = write_hf_checkpoint(model_config, params, tmp_path / "sharded", max_shard_bytes=60_000)
    assert (out / "model.safetensors.index.json").exists()
    assert len(list(out.glob("model-*.safetensors"))) > 2
    again_config, again = read_hf_checkpoint(out)
    assert again_config == model_config
    jax.tree.map(np.testing.assert_array_equal, again, params)


def test_cli_import_then_export_round_trip(tmp_path):
    src = _saved(tmp_path / "src", **CONFIGS["gqa-untied-theta-eps"])
    (src / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 256}))
    assert main(["import-hf", "--hf-dir", str(src), "--out", str(tmp_path / "ours")]) == 0
    config, params = checkpoint.restore_params(tmp_path / "ours")
    assert config.model.num_kv_heads == 2
    assert (tmp_path / "ours" / "tokenizer" / "tokenizer_config.json").exists()
    assert main(["export-hf", "--checkpoint", str(tmp_path / "ours"),
                 "--out", str(tmp_path / "back")]) == 0
    original, back = load_file(src / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert set(original) == set(back)
    for name in original:
        np.testing.assert_array_equal(original[name], back[name])
    assert (tmp_path / "back" / "tokenizer_config.json").exists()


def _saved(path, **overrides):
    hf_model(**overrides).save_pretrained(path)
    return path


def _edit_tensors(path, edit):
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def _edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("damage, message", [
    (lambda p: _edit_tensors(p, lambda t: t.pop("model.layers.1.mlp.up_proj.weight")),
     "lacks tensor model.layers.1.mlp.up_proj.weight"),
    (lambda p: _edit_tensors(p, lambda t: t.update(
        {"model.layers.0.self_attn.k_proj.weight": np.zeros((8, 64), np.float32)})),
     r"tensor model.layers.0.self_attn.k_proj.weight has shape \(8, 64\)"),
    (lambda p: _edit_config(p, attention_bias=True), "attention_bias=True is not supported"),
    (lambda p: _edit_config(p, rope_parameters={"rope_type": "yarn", "factor": 2.0,
                                                "rope_theta": 1e4}),
     "rope_scaling.rope_type='yarn' is not supported"),
    (lambda p: _edit_config(p, hidden_act="gelu"), "hidden_act='gelu' is not supported"),
    (lambda p: (p / "model.safetensors").unlink(), "has neither model.safetensors"),
])
def test_bad_checkpoints_fail_naming_the_tensor_or_key(tmp_path, capsys, damage, message):
    src = _saved(tmp_path / "src", **CONFIGS["gqa-untied-theta-eps"])
    damage(src)
    with pytest.raises(UserError, match=message):
        read_hf_checkpoint(src)
    assert main(["import-hf", "--hf-dir", str(src), "--out", str(tmp_path / "out")]) == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_export_refuses_models_transformers_cannot_compute(tmp_path):
    model_config, params = read_hf_checkpoint(_saved(tmp_path / "src", **CONFIGS["mha-tied"]))
    with pytest.raises(UserError, match="model.qk_norm=True has no Llama equivalent"):
        write_hf_checkpoint(dataclasses.replace(model_config, qk_norm=True), params, tmp_path / "x")
    with pytest.raises(UserError, match="model.sliding_window=16 has no Llama equivalent"):
        write_hf_checkpoint(dataclasses.replace(model_config, sliding_window=16), params,
                            tmp_path / "y")


@pytest.mark.parametrize("name, dtype", [("gqa-untied-theta-eps", torch.float32),
                                         ("mha-tied", torch.bfloat16)])
def test_streamed_import_restores_exactly_the_in_memory_mapping(tmp_path, name, dtype):
    hf_model(**CONFIGS[name]).to(dtype).save_pretrained(tmp_path / "src")
    model_config, in_memory = read_hf_checkpoint(tmp_path / "src")
    import_hf_checkpoint(tmp_path / "src", tmp_path / "ours")
    config, restored = checkpoint.restore_params(tmp_path / "ours")
    assert config.model == model_config
    assert checkpoint.resolve(tmp_path / "ours") == ((tmp_path / "ours").absolute(), 0)
    assert jax.tree.structure(restored) == jax.tree.structure(in_memory)
    jax.tree.map(lambda ours, expected: np.testing.assert_array_equal(np.asarray(ours), expected),
                 restored, in_memory)


def test_import_failing_mid_write_leaves_no_finished_step(tmp_path, monkeypatch):
    src = _saved(tmp_path / "src", **CONFIGS["gqa-untied-theta-eps"])
    real_reader = hf_import._reader

    def failing_reader(files):
        get = real_reader(files)

        def fail_on_down(name, rows):
            if name.endswith("mlp.down_proj.weight"):
                raise OSError(f"cannot read {name}")
            return get(name, rows)

        return fail_on_down

    monkeypatch.setattr(hf_import, "_reader", failing_reader)
    with pytest.raises(Exception, match="cannot read model.layers.0.mlp.down_proj.weight"):
        import_hf_checkpoint(src, tmp_path / "out")
    assert not (tmp_path / "out" / "checkpoints" / "0").exists()
    with pytest.raises(UserError, match="holds no finished checkpoint step"):
        checkpoint.resolve(tmp_path / "out")


def test_import_on_two_processes_writes_once_and_restores_exactly(tmp_path):
    src = _saved(tmp_path / "src", **CONFIGS["gqa-untied-theta-eps"])
    out = io.StringIO()
    assert launch(["import-hf", "--hf-dir", str(src), "--out", str(tmp_path / "ours")],
                  processes=2, devices=4, timeout=300, out=out) == 0, out.getvalue()
    params_dir = tmp_path / "ours" / "checkpoints" / "0" / "params"
    assert [p.name for p in params_dir.glob("ocdbt.process_*")] == ["ocdbt.process_0"]
    _, restored = checkpoint.restore_params(tmp_path / "ours")
    jax.tree.map(lambda ours, expected: np.testing.assert_array_equal(np.asarray(ours), expected),
                 restored, read_hf_checkpoint(src)[1])


def _llama_weights_in(architecture, llama, **settings):
    """`transformers`' `architecture` (Mistral, Qwen2) holding the Llama model's weights; the
    attention biases Qwen2 has are zero, so it computes a Llama with its own masks."""
    config = getattr(transformers, f"{architecture}Config")(
        **{**llama.config.to_dict(), **settings}, attn_implementation="eager")
    model = getattr(transformers, f"{architecture}ForCausalLM")(config).eval()
    missing, unexpected = model.load_state_dict(llama.state_dict(), strict=False)
    assert not unexpected and all(name.endswith("_proj.bias") for name in missing), missing
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in missing:
                p.zero_()
    return model


@pytest.mark.parametrize("architecture, settings, ours", [
    ("Mistral", dict(sliding_window=16), dict(sliding_window=16)),
    ("Qwen2", dict(use_sliding_window=True, sliding_window=16, max_window_layers=0,
                   layer_types=["sliding_attention", "full_attention"] * 2),
     dict(sliding_window=16, global_every=2)),
])
def test_sliding_window_layers_equal_transformers(tmp_path, architecture, settings, ours):
    llama = hf_model(num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                     tie_word_embeddings=False)
    llama.save_pretrained(tmp_path)
    model_config, params = read_hf_checkpoint(tmp_path)
    windowed = dataclasses.replace(model_config, **ours)
    reference = hf_logits(_llama_weights_in(architecture, llama, **settings), TOKENS)
    assert np.abs(our_logits(windowed, params, TOKENS) - reference).max() < 1e-4
    # 80 tokens against a window of 16: the window changes the logits
    assert np.abs(our_logits(model_config, params, TOKENS) - reference).max() > 1e-2
