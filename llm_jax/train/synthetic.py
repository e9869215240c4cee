"""Random token batches and a step timer: what speed benchmarks need, with no data stack, so
they run on a bare accelerator image that has only jax and flax."""

from __future__ import annotations

import time

import jax
import numpy as np


def synthetic_batch(rows: int, length: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch in the train step's format: one document per row, every target counted."""
    tokens = np.random.RandomState(seed).randint(0, vocab, (rows, length + 1)).astype(np.int32)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
            "positions": np.tile(np.arange(length, dtype=np.int32), (rows, 1)),
            "segment_ids": np.ones((rows, length), np.int32),
            "loss_mask": np.ones((rows, length), np.float32)}


def seconds_per_step(training, steps: int) -> float:
    """Mean wall time of `steps` train steps on one synthetic batch, after a compile step."""
    config = training.config
    batch = training.put_batch(synthetic_batch(config.train.batch_size, config.data.seq_len,
                                               config.model.vocab_size))
    state, metrics = training.step(training.state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = training.step(state, batch)
    jax.block_until_ready(metrics)
    return (time.perf_counter() - start) / steps
