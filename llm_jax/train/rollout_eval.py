"""PPO's held-out evaluation: greedy replies to held-out prompts, scored by the run's reward."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from llm_jax.infer.host_arrays import every_process_rows
from llm_jax.parallel.lockstep import NO_PROMPT, lockstep


def greedy_rollout_metrics(rollouts: Any, params: Any, batches: Iterable[dict],
                           steps: int) -> dict[str, float]:
    """Mean score and reply length of greedy replies to every process's held-out prompts,
    sampled together on the global mesh; padding rows repeat a real prompt (every batch has
    the same shape) and are not counted."""
    scores, lengths = [], []
    for batch in lockstep(batches, steps):
        indices = every_process_rows(np.asarray(batch["index"]))
        real = indices != NO_PROMPT
        if not real.any():
            continue
        rows = rollouts.sample(params, np.where(real, indices, indices[real][0]), seed=0,
                               greedy=True)
        scores.extend(rollouts.scores(rows)[real].tolist())
        lengths.extend(rows["response_mask"].sum(axis=1)[real].tolist())
    if not scores:
        return {}
    return {"eval_score": float(np.mean(scores)), "eval_response_length": float(np.mean(lengths))}
