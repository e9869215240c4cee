"""Held-out evaluation in the training loop: `eval.steps` batches (0: the whole pass), with
every sum (NLL, tokens, bytes) taken over the global batch on the devices."""

from types import SimpleNamespace

import jax
import numpy as np
import pytest

from llm_jax.config import load_config
from llm_jax.model import Transformer, init_params
from llm_jax.parallel.mesh import make_mesh
from llm_jax.train.loop import evaluate, make_eval_step
from llm_jax.train.losses import cross_entropy_sums

VOCAB = 64


def _batches(count: int, rows: int = 8, length: int = 16):
    rng = np.random.default_rng(0)
    for _ in range(count):
        tokens = rng.integers(0, VOCAB, (rows, length + 1))
        mask = (rng.random((rows, length)) < 0.8).astype(np.int32)
        positions = np.broadcast_to(np.arange(length, dtype=np.int32), (rows, length))
        yield {"inputs": tokens[:, :-1].astype(np.int32),
               "targets": tokens[:, 1:].astype(np.int32), "loss_mask": mask,
               "positions": positions, "segment_ids": np.ones((rows, length), np.int32)}


@pytest.mark.parametrize("steps, used", [(0, 3), (2, 2)])
def test_eval_loss_and_bits_per_byte_over_the_global_batch(steps, used):
    config = load_config("tiny", [f"model.vocab_size={VOCAB}", "model.d_model=32",
                                  "model.num_layers=1", "model.num_heads=2",
                                  "model.num_kv_heads=1", "model.mlp_dim=64", "mesh.data=8",
                                  "data.seq_len=16", "train.loss_chunk=0"])
    mesh = make_mesh(config)
    params = init_params(config.model, jax.random.key(0))
    token_bytes = np.arange(VOCAB, dtype=np.float32) % 5
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
    result = evaluate(make_eval_step(config, mesh, token_bytes), SimpleNamespace(params=params),
                      _batches(3), sharding, steps)

    nll = tokens = num_bytes = 0.0
    for batch in list(_batches(3))[:used]:  # one device, by hand
        logits = Transformer(config.model).apply({"params": params}, batch["inputs"],
                                                 batch["positions"], batch["segment_ids"])
        batch_nll, _ = cross_entropy_sums(logits, batch["targets"], batch["loss_mask"])
        nll += float(batch_nll)
        tokens += batch["loss_mask"].sum()
        num_bytes += (token_bytes[batch["targets"]] * batch["loss_mask"]).sum()
    assert result["eval_loss"] == pytest.approx(nll / tokens, rel=1e-5)
    assert result["eval_bpb"] == pytest.approx(nll / (np.log(2) * num_bytes), rel=1e-5)
