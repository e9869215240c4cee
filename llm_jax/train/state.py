"""The train state: one pytree of everything a step reads and writes, created in its shards.

The state is created inside `jax.jit` with `out_shardings`, so each device only ever allocates
its own shards: a model larger than one host's memory is never materialized whole.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from llm_jax.config import Config
from llm_jax.model.heads import init_train_params
from llm_jax.parallel.rules import axis_rules
from llm_jax.parallel.sharding import logical_to_shardings, sharding_context
from llm_jax.train.init_from import copies_reference
from llm_jax.train.trainable import trained_params


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
    def create(cls, params: Any, trained: Any, tx) -> "TrainState":
        """`trained`: the part of `params` the optimizer updates (see `trainable.py`)."""
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(trained),
                   bad_steps=jnp.zeros((), jnp.int32))


def initial_state(config: Config, tx, key: jax.Array) -> TrainState:
    params = init_train_params(config, key)
    return TrainState.create(params, trained_params(config, params), tx)


def create_train_state(config: Config, mesh: Mesh, tx, rng: jax.Array) -> tuple[TrainState, Any]:
    """(state, its shardings), each parameter and optimizer moment born in its shards."""
    rules = axis_rules(config.mesh.rules)

    boxed_state = functools.partial(initial_state, config, tx)
    abstract = jax.eval_shape(boxed_state, rng)
    shardings = logical_to_shardings(abstract, mesh, rules)
    with sharding_context(mesh, rules):
        state = jax.jit(lambda key: nn.unbox(boxed_state(key)), out_shardings=shardings)(rng)
    return state, shardings


def abstract_train_state(config: Config, tx) -> tuple[TrainState, Any]:
    """Shapes of the train state and their logical partition specs, allocating nothing."""
    def boxed_state():
        state = initial_state(config, tx, jax.random.key(0))
        return state.replace(reference=state.params) if copies_reference(config) else state

    abstract = jax.eval_shape(boxed_state)
    return nn.unbox(abstract), nn.get_partition_spec(abstract)
