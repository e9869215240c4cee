"""Ensembles: K runs that share every array shape, trained as one compiled program.

Members may differ only in what changes no shape: `seed` (initialization and data order) and
the optimizer's numbers. The schedule's settings (`optimizer.lr`, `warmup_steps`,
`min_lr_ratio`, `schedule`, `decay_fraction`) give each member its own schedule, picked by
member index inside the step; `weight_decay`, `b1`, `b2` and `eps` become traced per-member
scalars where members differ. The train state gains a leading ensemble axis and the step is
`jax.vmap` of the single run's own step, so each member computes what it would alone.

With `mesh.data > 1` the members are split over the data axis (`vmap`'s `spmd_axis_name`) and
each member's batch and parameters are sharded over the other axes as a single run's are: on a
slice, K small models fill the chips instead of one model drowning in data parallelism.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llm_jax.config import Config
from llm_jax.errors import UserError
from llm_jax.parallel.mesh import make_mesh
from llm_jax.parallel.rules import Rules, axis_rules
from llm_jax.parallel.sharding import BATCH_AXES, sharding_context
from llm_jax.train.forward import make_forward
from llm_jax.train.init_from import initialize_from, reference_params
from llm_jax.train.instruments import make_instruments
from llm_jax.train.loop import eval_sums
from llm_jax.train.objectives import make_objective
from llm_jax.train.optimizer import learning_rate_schedule, make_optimizer
from llm_jax.train.state import initial_state, create_train_state
from llm_jax.train.step import make_train_step

SCHEDULE_FIELDS = ("lr", "warmup_steps", "min_lr_ratio", "schedule", "decay_fraction")
TRACED_FIELDS = ("weight_decay", "b1", "b2", "eps")
MEMBER_FIELDS = ("seed", "run_dir", *(f"optimizer.{f}" for f in SCHEDULE_FIELDS + TRACED_FIELDS))
OBJECTIVES = ("lm", "sft")  # objectives whose data needs no model (DPO's, PPO's does)
ENSEMBLE_AXIS = "data"


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    return {k: v for key, value in tree.items()
            for k, v in _flat(value, f"{prefix}.{key}" if prefix else key).items()}


def check_members(configs: Sequence[Config]) -> None:
    """Fails, naming the settings, unless the configs can train as one ensemble."""
    if not configs:
        raise UserError("an ensemble needs at least one member config")
    first = _flat(dataclasses.asdict(configs[0]))
    for config in configs[1:]:
        other = _flat(dataclasses.asdict(config))
        differing = sorted(k for k in first.keys() | other.keys()
                           if k not in MEMBER_FIELDS and first.get(k) != other.get(k))
        if differing:
            raise UserError(
                f"ensemble members differ in {', '.join(differing[:6])}; members may differ "
                f"only in {', '.join(f for f in MEMBER_FIELDS if f != 'run_dir')}: train the "
                "others as separate runs or ensembles")
    if len({c.run_dir for c in configs}) < len(configs):
        raise UserError("ensemble members need distinct run_dir values (metrics go there)")
    base = configs[0]
    if base.train.objective not in OBJECTIVES:
        raise UserError(f"train.objective={base.train.objective} cannot train as an ensemble "
                        f"(its data needs the model); ensembles train {', '.join(OBJECTIVES)}")
    if base.mesh.pipe > 1:
        raise UserError("an ensemble cannot use mesh.pipe > 1; split members over mesh.data")
    if base.optimizer.name == "adafactor" and _traced_numbers(configs):
        raise UserError("optimizer.name=adafactor members must share weight_decay, b1, b2, eps")


def _traced_numbers(configs: Sequence[Config]) -> dict[str, np.ndarray]:
    """Per-member values of the optimizer numbers in which members differ."""
    values = {f: [getattr(c.optimizer, f) for c in configs] for f in TRACED_FIELDS}
    return {f: np.asarray(v, np.float32) for f, v in values.items() if len(set(v)) > 1}


def member_rules(rules: Rules, sharded: bool) -> Rules:
    """A member's rules: without the data axis when the ensemble axis holds it."""
    if not sharded:
        return rules

    def without_data(target):
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        kept = tuple(a for a in axes if a != ENSEMBLE_AXIS)
        return None if not kept else kept[0] if len(kept) == 1 else kept

    return tuple((name, without_data(target)) for name, target in rules)


@dataclasses.dataclass
class EnsembleTraining:
    configs: list[Config]
    mesh: Mesh
    rules: Rules  # a member's
    state: Any  # TrainState with a leading [members] axis on every leaf
    shardings: Any
    step: Any  # jitted `step(states, batches) -> (states, metrics [members])`
    evaluate_sums: Any  # jitted `sums(params, batches)` -> ([members] nll, tokens, bytes)
    batch_sharding: NamedSharding  # batches [members, batch, length]

    @property
    def members(self) -> int:
        return len(self.configs)


def _prefixed(sharding: NamedSharding, axis: str | None) -> NamedSharding:
    return NamedSharding(sharding.mesh, PartitionSpec(axis, *sharding.spec))


def _initial_states(configs: Sequence[Config], mesh: Mesh, rules: Rules, tx, axis: str | None):
    """(stacked state, its shardings): member k initialized as a single run with its seed
    would be, or every member from `train.init_from`."""
    base = configs[0]
    boxed = functools.partial(initial_state, base, tx)
    abstract = jax.eval_shape(boxed, jax.random.key(0))
    member = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules)
    shardings = jax.tree.map(lambda s: _prefixed(s, axis), member)
    if base.train.init_from:  # every member starts from the same weights
        state, single = create_train_state(base, mesh, tx, jax.random.key(base.seed))
        state = initialize_from(base, state, single)
        stack = lambda s: jax.tree.map(  # noqa: E731
            lambda x: jnp.broadcast_to(x, (len(configs), *x.shape)), s)
        return jax.jit(stack, out_shardings=shardings)(state), shardings
    seeds = jnp.asarray([c.seed for c in configs], jnp.uint32)
    init = jax.vmap(lambda seed: nn.unbox(boxed(jax.random.key(seed))))
    with sharding_context(mesh, rules):
        return jax.jit(init, out_shardings=shardings)(seeds), shardings


def build_ensemble(configs: Sequence[Config], token_bytes: np.ndarray | None = None,
                   devices=None) -> EnsembleTraining:
    """The stacked state and compiled step (and eval) of the members, on the first one's mesh."""
    check_members(configs)
    configs = list(configs)
    base = configs[0]
    mesh = make_mesh(base, devices)
    members, data = len(configs), mesh.shape[ENSEMBLE_AXIS]
    if members % data:
        raise UserError(f"{members} ensemble members cannot split over mesh.data={data}: use a "
                        "member count divisible by it")
    axis = ENSEMBLE_AXIS if data > 1 else None
    rules = member_rules(axis_rules(base.mesh.rules), axis is not None)
    steps = base.train.steps
    tx = make_optimizer(base.optimizer, steps)
    state, shardings = _initial_states(configs, mesh, rules, tx, axis)

    objective = make_objective(base, make_forward(base, mesh))
    schedules = [learning_rate_schedule(c.optimizer, steps) for c in configs]
    numbers = {f: jnp.asarray(v) for f, v in _traced_numbers(configs).items()}
    instruments = make_instruments(base) if base.train.instrument else None

    def member_step(state, batch, index, member_numbers):
        schedule = lambda count: jax.lax.switch(index, schedules, count)  # noqa: E731
        member_tx = make_optimizer(dataclasses.replace(base.optimizer, **member_numbers), steps,
                                   schedule)
        step = make_train_step(objective, member_tx, schedule, base.train.microbatches,
                               instruments, reference=functools.partial(reference_params, base),
                               adapters_only=bool(base.model.lora.rank))
        return step(state, batch)

    def ensemble_step(states, batches):
        return jax.vmap(member_step, spmd_axis_name=axis)(
            states, batches, jnp.arange(members), numbers)

    batch_axes = nn.logical_to_mesh_axes(BATCH_AXES, rules)
    batches = NamedSharding(mesh, PartitionSpec(axis, *batch_axes))
    replicated = NamedSharding(mesh, PartitionSpec())
    jitted = jax.jit(ensemble_step, in_shardings=(shardings, batches),
                     out_shardings=(shardings, replicated), donate_argnums=0)
    sums = jax.jit(jax.vmap(eval_sums(base, mesh, token_bytes), spmd_axis_name=axis),
                   in_shardings=(shardings.params, batches), out_shardings=replicated)

    def in_context(fn):
        def run(*args):
            with sharding_context(mesh, rules):
                return fn(*args)
        return run

    return EnsembleTraining(configs, mesh, rules, state, shardings, in_context(jitted),
                            in_context(sums), batches)
