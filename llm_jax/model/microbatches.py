"""Cutting a batch into microbatches and joining them again: gradient accumulation, the
GPipe schedule and chunked rollout scoring all cut the same way.

Microbatch i takes every `count`-th row starting at i, so each microbatch stays spread over
all data shards of a batch sharded by rows (no resharding to cut it).
"""

from __future__ import annotations

from typing import Any

import jax


def split_microbatches(tree: Any, count: int) -> Any:
    """Every leaf [B, ...] -> [count, B / count, ...]."""
    def split(x):
        return x.reshape(x.shape[0] // count, count, *x.shape[1:]).swapaxes(0, 1)

    return jax.tree.map(split, tree)


def merge_microbatches(tree: Any) -> Any:
    """The inverse: every leaf [count, rows, ...] -> [rows * count, ...] in the original order."""
    return jax.tree.map(lambda x: x.swapaxes(0, 1).reshape(-1, *x.shape[2:]), tree)
