"""`eval.steps`: how many held-out batches an evaluation reads; 0 reads the whole pass."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax.train.loop import evaluate


def _batches(count: int):
    for k in range(count):
        yield {"targets": np.full((2, 4), 1, np.int32), "loss_mask": np.ones((2, 4), np.int32),
               "nll": np.full((2, 4), float(k + 1), np.float32)}


def _eval_step(params, batch):
    return jnp.sum(batch["nll"] * batch["loss_mask"]), jnp.sum(batch["loss_mask"])


@pytest.mark.parametrize("steps, expected", [(0, (1 + 2 + 3) / 3), (2, (1 + 2) / 2)])
def test_eval_steps_zero_reads_every_batch(steps, expected):
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    token_bytes = np.array([0.0, 2.0], np.float32)
    result = evaluate(_eval_step, SimpleNamespace(params=None), _batches(3), sharding, steps, token_bytes)
    assert result["eval_loss"] == pytest.approx(expected)
    assert result["eval_bpb"] == pytest.approx(expected / (np.log(2) * 2))
