"""Finite batch streams read in step by every process.

Each process reads its own shards of a held-out split, and packing makes their batch counts
differ; a process that stopped early would leave the others waiting in the next step's
collective forever. `lockstep` asks every process, batch by batch, whether it still has one:
the pass ends when none has, and a process that ran out first contributes rows of padding
(no loss, no score) shaped like the others' batches.
"""

from __future__ import annotations

import itertools
from typing import Iterable, Iterator

import jax
import numpy as np

from llm_jax.parallel.agreement import allgather_json

NO_PROMPT = -1  # the prompt index of a padding row (PPO's held-out prompts)


def padding_like(spec: dict[str, list]) -> dict[str, np.ndarray]:
    """A batch of padding rows: prompt indices -1, every other field (masks, token ids,
    segment ids) zero, which the objectives and evaluations count as nothing."""
    return {key: np.full(shape, NO_PROMPT if key == "index" else 0, np.dtype(dtype))
            for key, (shape, dtype) in spec.items()}


def lockstep(batches: Iterable[dict[str, np.ndarray]], steps: int
             ) -> Iterator[dict[str, np.ndarray]]:
    """This process's batches, at most `steps` (0: all), as many on every process."""
    limited = itertools.islice(batches, steps or None)
    if jax.process_count() == 1:
        yield from limited
        return
    for batch in itertools.chain(limited, itertools.repeat(None)):
        spec = None if batch is None else {key: [list(value.shape), value.dtype.str]
                                           for key, value in batch.items()}
        specs = [s for s in allgather_json(spec) if s is not None]
        if not specs:
            return
        yield padding_like(specs[0]) if batch is None else batch
