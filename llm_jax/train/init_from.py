"""Where fine-tuning starts: `train.init_from`'s parameters, and the frozen reference.

DPO (with `dpo.reference=model`) and PPO compare the policy with its starting point, so the
train state carries a second parameter tree, `reference`: a copy of the initial parameters,
sharded like them, never updated, and saved with every checkpoint so that a resumed run has
exactly the reference it started with.

A checkpoint may hold a different head than the run trains (a reward model's score head, or
none where PPO needs a value head): the parameters both have are loaded, a head the run needs
and the checkpoint lacks starts freshly initialized, and one the run does not need is dropped.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from llm_jax import checkpoint
from llm_jax.config import Config
from llm_jax.errors import UserError
from llm_jax.model.heads import abstract_train_params


def needs_reference(config: Config) -> bool:
    objective = config.train.objective
    return (objective == "dpo" and config.dpo.reference == "model") or objective == "ppo"


def _copy(params: Any, shardings: Any) -> Any:
    """New buffers with the same values and shardings: the step donates the policy's."""
    return jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=shardings)(params)


def attach_reference(config: Config, state: Any, shardings: Any) -> tuple[Any, Any]:
    """(state, shardings) with `reference` set to a copy of the parameters when the objective
    needs one."""
    if not needs_reference(config):
        return state, shardings
    return (state.replace(reference=_copy(state.params, shardings.params)),
            shardings.replace(reference=shardings.params))


def initialize_from(config: Config, state: Any, shardings: Any) -> Any:
    """The state with `train.init_from`'s parameters (and a reference copied from them)."""
    run_dir, _ = checkpoint.resolve(config.train.init_from)
    source = checkpoint.load_run_config(run_dir)
    if source.model != config.model:
        raise UserError(f"train.init_from={config.train.init_from} holds a different model; "
                        "its model section must equal this run's")
    abstract = abstract_train_params(source)
    mesh = jax.tree.leaves(shardings.params)[0].mesh
    replicated = NamedSharding(mesh, PartitionSpec())
    source_shardings = {
        key: shardings.params[key] if key in shardings.params
        else jax.tree.map(lambda _: replicated, abstract[key]) for key in abstract}
    _, restored = checkpoint.restore_params(config.train.init_from, source_shardings)
    fresh = sorted(set(state.params) - set(restored))
    if fresh and jax.process_index() == 0:
        print(f"train.init_from: {', '.join(fresh)} not in the checkpoint; freshly initialized")
    params = {key: restored[key] if key in restored else value
              for key, value in state.params.items()}
    state = state.replace(params=params)
    if state.reference is not None:
        state = state.replace(reference=_copy(params, shardings.reference))
    return state
