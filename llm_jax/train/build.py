"""Everything a run needs to take steps on a mesh, built in one place for the loop, the
tests, the benchmarks and `plan`."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import optax
from jax.sharding import Mesh, NamedSharding

from llm_jax.config import Config
from llm_jax.parallel.rules import Rules, axis_rules
from llm_jax.parallel.sharding import batch_sharding, jit_train_step
from llm_jax.train.forward import make_forward
from llm_jax.train.init_from import attach_reference, reference_params
from llm_jax.train.instruments import make_instruments
from llm_jax.train.objectives import Objective, make_objective
from llm_jax.train.optimizer import learning_rate_schedule, make_optimizer
from llm_jax.train.state import TrainState, create_train_state
from llm_jax.train.step import make_train_step


@dataclasses.dataclass
class Training:
    config: Config
    mesh: Mesh
    rules: Rules
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    objective: Objective
    state: TrainState
    shardings: Any
    step: Any  # jitted `step(state, batch) -> (state, metrics)`
    batch_sharding: NamedSharding

    @property
    def microbatches_in_step(self) -> int:
        """Gradient-accumulation microbatches; a pipeline consumes its microbatches itself."""
        return 1 if self.mesh.shape["pipe"] > 1 else self.config.train.microbatches

    def put_batch(self, batch: dict) -> dict:
        return jax.device_put(batch, self.batch_sharding)


def _objective_and_step(config: Config, mesh: Mesh, tx, shardings):
    schedule = learning_rate_schedule(config.optimizer, config.train.steps)
    objective = make_objective(config, make_forward(config, mesh))
    microbatches = 1 if mesh.shape["pipe"] > 1 else config.train.microbatches
    instruments = make_instruments(config) if config.train.instrument else None
    step = make_train_step(objective, tx, schedule, microbatches, instruments,
                           reference=functools.partial(reference_params, config),
                           adapters_only=bool(config.model.lora.rank))
    step = jit_train_step(step, config, mesh, shardings)
    return schedule, objective, step


def compile_step_for(config: Config, mesh: Mesh, tx, shardings) -> tuple[Any, NamedSharding]:
    """(jitted step, batch sharding) for state shardings computed elsewhere (`plan`)."""
    _, _, step = _objective_and_step(config, mesh, tx, shardings)
    return step, batch_sharding(mesh, axis_rules(config.mesh.rules))


def build_training(config: Config, mesh: Mesh, rng: jax.Array | None = None) -> Training:
    """Creates the sharded train state (seeded by `config.seed` unless `rng` is given)."""
    tx = make_optimizer(config.optimizer, config.train.steps)
    rng = jax.random.key(config.seed) if rng is None else rng
    state, shardings = create_train_state(config, mesh, tx, rng)
    state, shardings = attach_reference(config, state, shardings)
    schedule, objective, step = _objective_and_step(config, mesh, tx, shardings)
    rules = axis_rules(config.mesh.rules)
    return Training(config, mesh, rules, tx, schedule, objective, state, shardings, step,
                    batch_sharding(mesh, rules))
