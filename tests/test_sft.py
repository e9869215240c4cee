"""SFT trains on the assistant's tokens only: the prompt's labels do not move the loss or the
gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from post_training_factory import MODEL, train_chat_tokenizer, write_jsonl

from llm_jax.config import load_config
from llm_jax.model import init_params
from llm_jax.train.forward import make_forward
from llm_jax.train.objectives import make_objective
from llm_jax.train.sft_data import SftData


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    tokenizer = train_chat_tokenizer(root / "tokenizer.model")
    records = [{"messages": [{"role": "system", "content": "reverse"},
                             {"role": "user", "content": w},
                             {"role": "assistant", "content": w[::-1]}]}
               for w in ("abc", "hello", "xyz", "qwerty", "lmn", "opq")]
    config = load_config("tiny", MODEL + [
        f"run_dir={root / 'run'}", f"tokenizer.path={tokenizer}", "train.objective=sft",
        f"post.data={write_jsonl(root / 'sft.jsonl', records)}", "train.batch_size=4",
        "post.eval_fraction=0"])
    return config, SftData(config)


def test_prompt_labels_do_not_change_the_loss(sft):
    config, data = sft
    batch = {k: jnp.asarray(v) for k, v in next(data.train_iterator()).items()}
    prompt = (batch["loss_mask"] == 0) & (batch["segment_ids"] > 0)
    assert prompt.any() and (batch["loss_mask"] > 0).any()
    scrambled = dict(batch, targets=jnp.where(
        prompt, jax.random.randint(jax.random.key(1), batch["targets"].shape, 0, 299),
        batch["targets"]))
    assert (scrambled["targets"] != batch["targets"]).any()
    objective = make_objective(config, make_forward(config))
    params = jax.jit(init_params, static_argnums=0)(config.model, jax.random.key(0))
    grad = jax.jit(jax.value_and_grad(objective, has_aux=True))
    (loss, sums), grads = grad(params, batch)
    (loss2, sums2), grads2 = grad(params, scrambled)
    assert float(loss) == float(loss2) and float(sums["denominator"]) == float(
        sums2["denominator"])
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 grads, grads2)
    # while the reply's labels do
    reply = batch["loss_mask"] > 0
    changed = dict(batch, targets=jnp.where(reply, (batch["targets"] + 1) % 299,
                                            batch["targets"]))
    assert float(grad(params, changed)[0][0]) != float(loss)


def test_sft_from_an_imported_hugging_face_checkpoint(tmp_path):
    """Fine-tuning starts from `llm-jax import-hf`'s output, with its own tokenizer."""
    import dataclasses

    from checkpoint_factory import imported_checkpoint

    from llm_jax import checkpoint
    from llm_jax.infer.loading import load_model
    from llm_jax.train.loop import train
    from llm_jax.train.metrics import read_metrics

    source, _ = imported_checkpoint(tmp_path)
    rng = np.random.default_rng(0)
    records = []
    for _ in range(64):  # continue a run of word ids: w5 w6 -> w7 w8
        start = int(rng.integers(5, 90))
        records.append({"prompt": f"w{start} w{start + 1}",
                        "completion": f" w{start + 2} w{start + 3}"})
    config = load_config("tiny", [
        f"run_dir={tmp_path / 'run'}", f"train.init_from={source}", "train.objective=sft",
        f"post.data={write_jsonl(tmp_path / 'sft.jsonl', records)}", "post.template=none",
        "data.seq_len=64", "train.batch_size=8", "train.steps=8", "train.log_every=1",
        "optimizer.lr=1e-3", "optimizer.warmup_steps=1", "eval.every=0", "eval.steps=1",
        "checkpoint.async_save=false"])
    config = dataclasses.replace(config, model=checkpoint.load_run_config(source).model)
    data = SftData(config)
    assert data.template.name == "none" and data.tokenizer.vocab_size == 101
    train(config, data, progress=False)
    loss = [r["loss"] for r in read_metrics(tmp_path / "run")]
    assert np.mean(loss[-2:]) < loss[0]
    assert load_model(tmp_path / "run").tokenizer.vocab_size == 101  # HF tokenizer kept
