"""The reward model: Bradley-Terry loss as TRL computes it, the score read at each sequence's
last real token, the head carrying logical axis names."""

import collections
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from post_training_factory import MODEL

from llm_jax.config import load_config
from llm_jax.model.heads import SCORE_HEAD, init_train_params
from llm_jax.train.forward import make_forward
from llm_jax.train.reward_model import bradley_terry_losses, reward_objective, sequence_scores


def config(*extra):
    return load_config("tiny", MODEL + ["train.objective=reward", *extra])


@pytest.mark.parametrize("center", [0.0, 0.01])
def test_bradley_terry_loss_equals_trls(center):
    torch = pytest.importorskip("torch")
    trl = pytest.importorskip("trl")
    rng = np.random.default_rng(0)
    chosen, rejected = rng.normal(size=(2, 16)).astype(np.float32)
    scores = torch.tensor(np.concatenate([chosen, rejected]))[:, None]
    identity = lambda x: x  # noqa: E731
    trainer = types.SimpleNamespace(
        model=types.SimpleNamespace(training=False),
        args=types.SimpleNamespace(center_rewards_coefficient=center or None),
        accelerator=types.SimpleNamespace(gather=identity, gather_for_metrics=identity),
        _metrics={"eval": collections.defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    expected = trl.RewardTrainer.compute_loss(
        trainer, lambda **_: types.SimpleNamespace(logits=scores),
        {"input_ids": torch.zeros((32, 4), dtype=torch.long)})
    ours = jnp.mean(bradley_terry_losses(jnp.asarray(chosen), jnp.asarray(rejected), center))
    np.testing.assert_allclose(float(ours), float(expected), rtol=1e-6)


def test_score_is_read_at_the_last_real_token():
    cfg = config()
    params = nn.unbox(jax.jit(init_train_params, static_argnums=0)(cfg, jax.random.key(0)))
    forward = make_forward(cfg)
    scores = jax.jit(lambda params, batch: sequence_scores(cfg.model, forward, params, batch))
    length = cfg.data.seq_len
    tokens = np.full((2, length), 3, np.int32)
    tokens[:, :10] = np.arange(10, 20)
    segments = (np.arange(length)[None] < 10).astype(np.int32).repeat(2, 0)
    batch = {"inputs": jnp.asarray(tokens), "segment_ids": jnp.asarray(segments),
             "positions": jnp.asarray(np.where(segments, np.arange(length), 0))}
    before = scores(params, batch)
    padding_changed = dict(batch, inputs=batch["inputs"].at[:, 12:].set(7))
    np.testing.assert_allclose(scores(params, padding_changed),
                               before, rtol=1e-6)
    last_changed = dict(batch, inputs=batch["inputs"].at[:, 9].set(40))
    assert not np.allclose(scores(params, last_changed), before)


def test_head_has_logical_axes_and_the_objective_reports_accuracy():
    cfg = config()
    boxed = jax.eval_shape(lambda: init_train_params(cfg, jax.random.key(0)))
    spec = nn.get_partition_spec(boxed)[SCORE_HEAD]
    assert tuple(spec["kernel"]) == ("embed", None)
    params = nn.unbox(jax.jit(init_train_params, static_argnums=0)(cfg, jax.random.key(0)))
    length, pairs = cfg.data.seq_len, 4
    real = np.arange(length)[None] < np.array([[20], [30], [40], [50]])
    batch = {}
    for i, side in enumerate(("chosen", "rejected")):
        batch[f"{side}_tokens"] = jnp.asarray(np.where(real, 10 + i, 3).astype(np.int32))
        batch[f"{side}_segment_ids"] = jnp.asarray(real.astype(np.int32))
        batch[f"{side}_positions"] = jnp.asarray(np.where(real, np.arange(length), 0))
        batch[f"{side}_mask"] = jnp.asarray((real & (np.arange(length) > 5)).astype(np.float32))
    loss, sums = jax.jit(reward_objective(cfg, make_forward(cfg)))(params, batch)
    assert float(sums["denominator"]) == pairs
    assert 0.0 <= float(sums["accuracy"]) <= pairs
    np.testing.assert_allclose(
        float(sums["margin"]), float(sums["rewards_chosen"] - sums["rewards_rejected"]),
        rtol=1e-5, atol=1e-6)
    assert np.isfinite(float(loss))
