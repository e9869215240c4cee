"""One short training run on a mesh of the first `devices` devices: the loss and gradients of
the first batch (of the parameters the run trains), and the losses of five steps; the sharded
tests compare it to one device."""

import jax
import numpy as np

from llm_jax.config import load_config
from llm_jax.parallel.mesh import make_mesh
from llm_jax.parallel.sharding import sharding_context
from llm_jax.train import trainable
from llm_jax.train.build import build_training
from llm_jax.train.step import accumulate_gradients

BASE = ["model.vocab_size=256", "model.d_model=64", "model.num_layers=4", "model.num_heads=4",
        "model.num_kv_heads=2", "model.mlp_dim=128", "data.seq_len=32", "train.batch_size=16",
        "train.steps=5", "optimizer.warmup_steps=1", "optimizer.lr=1e-2", "train.loss_chunk=8"]


def batches(count=5, rows=16, length=32, vocab=256):
    rng = np.random.RandomState(0)
    for _ in range(count):
        tokens = rng.randint(0, vocab, (rows, length + 1)).astype(np.int32)
        # Two packed documents per row, to exercise segment masking under sharding.
        segments = np.where(np.arange(length) < 20, 1, 2).astype(np.int32)[None].repeat(rows, 0)
        positions = np.where(segments == 1, np.arange(length), np.arange(length) - 20)
        yield {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
               "positions": positions.astype(np.int32), "segment_ids": segments,
               "loss_mask": (np.arange(length) != 19).astype(np.float32)[None].repeat(rows, 0)}


def run(overrides, devices):
    config = load_config("tiny", BASE + overrides)
    training = build_training(config, make_mesh(config, jax.devices()[:devices]),
                              jax.random.key(0))
    length, rows = config.data.seq_len, config.train.batch_size
    first = training.put_batch(next(batches(1, rows, length)))

    @jax.jit
    def gradients(params, batch):
        """Of the trained parameters: all of them, or under LoRA the adapters."""
        objective = training.objective
        if config.model.lora.rank:
            params, frozen = trainable.split(params)
            objective = lambda trained, b: training.objective(trainable.merge(trained, frozen), b)
        numerator, sums, grads = accumulate_gradients(
            objective, params, batch, training.microbatches_in_step)
        return numerator / sums["denominator"], jax.tree.map(
            lambda g: g / sums["denominator"], grads)

    with sharding_context(training.mesh, training.rules):
        loss, grads = jax.device_get(gradients(training.state.params, first))
    state, losses = training.state, []
    for batch in batches(rows=rows, length=length):
        state, metrics = training.step(state, training.put_batch(batch))
        losses.append(float(metrics["loss"]))
    return loss, grads, losses
