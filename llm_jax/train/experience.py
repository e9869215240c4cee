"""PPO's minibatches of one rollout: each epoch over the experience takes the rows in a new
order, the same on a resumed run and on any process count (seeded by run seed, rollout step
and epoch)."""

from __future__ import annotations

import numpy as np


def minibatch_rows(rows: int, batch: int, update: int, minibatches: int, seed: int,
                   rollout_step: int) -> np.ndarray:
    """The indices into the rollout's `rows` experience rows that update `update` trains on."""
    epoch, minibatch = divmod(update, minibatches)
    order = np.random.default_rng([seed, rollout_step, epoch]).permutation(rows)
    return order[minibatch * batch:(minibatch + 1) * batch]
