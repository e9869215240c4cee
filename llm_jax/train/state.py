"""The train state: one pytree of everything a step reads and writes."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
    """`step` counts batches consumed; `bad_steps` counts consecutive skipped (non-finite) ones;
    `reference` is a frozen copy of the initial params for objectives that compare against
    them (DPO, PPO; see `init_from.py`), else None."""

    step: jax.Array
    params: Any
    opt_state: Any
    bad_steps: jax.Array
    reference: Any = None

    @classmethod
    def create(cls, params: Any, tx) -> "TrainState":
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                   bad_steps=jnp.zeros((), jnp.int32))
