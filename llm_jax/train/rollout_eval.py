"""PPO's held-out evaluation: greedy replies to held-out prompts, scored by the run's reward."""

from __future__ import annotations

import itertools
from typing import Any, Iterable

import numpy as np


def greedy_rollout_metrics(rollouts: Any, params: Any, batches: Iterable[dict], steps: int,
                           batch_size: int) -> dict[str, float]:
    """Mean score and reply length of greedy replies. Batches are padded to `batch_size`
    rows (every host samples the same shapes); the padding rows are not counted."""
    scores, lengths = [], []
    for batch in itertools.islice(batches, steps or None):  # 0: the whole pass
        indices = [int(i) for i in batch["index"] if i >= 0]
        if not indices:
            continue
        padded = indices + [indices[0]] * (batch_size - len(indices))
        rows = rollouts.sample(params, padded, seed=0, greedy=True)
        scores.extend(rollouts.scores(rows)[:len(indices)].tolist())
        lengths.extend(rows["response_mask"].sum(axis=1)[:len(indices)].tolist())
    if not scores:
        return {}
    return {"eval_score": float(np.mean(scores)), "eval_response_length": float(np.mean(lengths))}
