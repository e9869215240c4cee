"""PPO's minibatches of one rollout: each epoch over the experience takes the rows in a new
order, the same on a resumed run (seeded by run seed, rollout step, epoch and host)."""

from __future__ import annotations

import numpy as np


def minibatch_rows(rows: int, batch: int, update: int, minibatches: int, seed: int,
                   rollout_step: int, process_index: int) -> np.ndarray:
    """The indices into this host's `rows` experience rows that update `update` trains on."""
    epoch, minibatch = divmod(update, minibatches)
    order = np.random.default_rng([seed, rollout_step, epoch, process_index]).permutation(rows)
    return order[minibatch * batch:(minibatch + 1) * batch]
