"""Ensembles: K runs that share every array shape, trained as one compiled program.

Members may differ only in what changes no shape: `seed` (initialization and data order),
`model.init_std`, the optimizer's numbers and DPO's beta. The schedule's settings
(`optimizer.lr`, `warmup_steps`, `min_lr_ratio`, `schedule`, `decay_fraction`) give each
member its own schedule, picked by member index inside the step; `weight_decay`, `b1`, `b2`,
`eps` and `dpo.beta` become traced per-member scalars where members differ. The train state
gains a leading ensemble axis and the step is `jax.vmap` of the single run's own step, so each
member computes what it would alone.

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
from llm_jax.train.init_from import attach_reference, initialize_from, reference_params
from llm_jax.train.instruments import make_instruments
from llm_jax.train.loop import eval_sums
from llm_jax.train.objectives import make_objective
from llm_jax.train.optimizer import learning_rate_schedule, make_optimizer
from llm_jax.train.state import initial_state, create_train_state
from llm_jax.train.step import make_train_step

SCHEDULE_FIELDS = ("lr", "warmup_steps", "min_lr_ratio", "schedule", "decay_fraction")
TRACED_FIELDS = (*(f"optimizer.{f}" for f in ("weight_decay", "b1", "b2", "eps")), "dpo.beta")
MEMBER_FIELDS = ("seed", "run_dir", "model.init_std",
                 *(f"optimizer.{f}" for f in SCHEDULE_FIELDS), *TRACED_FIELDS)
OBJECTIVES = ("lm", "sft", "dpo")  # objectives whose data needs no model (PPO's does)
OBJECTIVE_EVALS = ("dpo",)  # evaluated by their objective, as `PreferenceData.evaluate` does
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
    if base.train.objective == "dpo" and base.dpo.reference != "model":
        raise UserError("dpo.reference=precomputed cannot train as an ensemble (its data needs "
                        "the model); use dpo.reference=model")
    if base.mesh.pipe > 1:
        raise UserError("an ensemble cannot use mesh.pipe > 1; split members over mesh.data")
    traced = _traced_numbers(configs)
    if base.optimizer.name == "adafactor" and any(f.startswith("optimizer.") for f in traced):
        raise UserError("optimizer.name=adafactor members must share weight_decay, b1, b2, eps")


def _traced_numbers(configs: Sequence[Config]) -> dict[str, np.ndarray]:
    """Per-member values of the traced numbers ("section.field") in which members differ."""
    def value(config: Config, field: str):
        section, name = field.split(".")
        return getattr(getattr(config, section), name)

    values = {f: [value(c, f) for c in configs] for f in TRACED_FIELDS}
    return {f: np.asarray(v, np.float32) for f, v in values.items() if len(set(v)) > 1}


def _with_numbers(config: Config, numbers: dict[str, Any]) -> Config:
    """`config` with a member's traced numbers in place of its own (inside the vmapped step)."""
    sections: dict[str, dict[str, Any]] = {}
    for field, value in numbers.items():
        section, name = field.split(".")
        sections.setdefault(section, {})[name] = value
    return dataclasses.replace(config, **{
        section: dataclasses.replace(getattr(config, section), **fields)
        for section, fields in sections.items()})


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
    evaluate_sums: Any  # jitted `sums(states, batches)`: [members] held-out sums (`member_eval`)
    batch_sharding: NamedSharding  # batches [members, batch, length]

    @property
    def members(self) -> int:
        return len(self.configs)


def _prefixed(sharding: NamedSharding, axis: str | None) -> NamedSharding:
    return NamedSharding(sharding.mesh, PartitionSpec(axis, *sharding.spec))


def _initial_states(configs: Sequence[Config], mesh: Mesh, rules: Rules, tx, axis: str | None):
    """(stacked state, its shardings): member k initialized as its single run would be, with
    its seed and init scale, then `train.init_from`'s weights where it starts from those."""
    base = configs[0]
    boxed = functools.partial(initial_state, base, tx)
    abstract = jax.eval_shape(boxed, jax.random.key(0))
    member = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules)
    shardings = jax.tree.map(lambda s: _prefixed(s, axis), member)
    stack = jax.jit(lambda *states: jax.tree.map(lambda *xs: jnp.stack(xs), *states),
                    out_shardings=shardings)
    if base.train.init_from or len({c.model.init_std for c in configs}) > 1:
        # One member at a time: a checkpoint's weights, and the heads or adapters it lacks
        # freshly initialized from the member's own seed, as `build_training` does.
        singles = []
        for config in configs:
            state, single = create_train_state(config, mesh, tx, jax.random.key(config.seed))
            singles.append(initialize_from(config, state, single) if config.train.init_from
                           else state)
        return stack(*singles), shardings
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
    state, shardings = attach_reference(base, state, shardings)

    forward = make_forward(base, mesh)
    schedules = [learning_rate_schedule(c.optimizer, steps) for c in configs]
    numbers = {f: jnp.asarray(v) for f, v in _traced_numbers(configs).items()}
    instruments = make_instruments(base) if base.train.instrument else None
    reference = functools.partial(reference_params, base)

    def member_step(state, batch, index, member_numbers):
        config = _with_numbers(base, member_numbers)
        schedule = lambda count: jax.lax.switch(index, schedules, count)  # noqa: E731
        member_tx = make_optimizer(config.optimizer, steps, schedule)
        step = make_train_step(make_objective(config, forward), member_tx, schedule,
                               base.train.microbatches, instruments, reference=reference,
                               adapters_only=bool(base.model.lora.rank))
        return step(state, batch)

    def ensemble_step(states, batches):
        return jax.vmap(member_step, spmd_axis_name=axis)(
            states, batches, jnp.arange(members), numbers)

    lm_sums = eval_sums(base, mesh, token_bytes)

    def member_eval(state, batch, member_numbers):
        """The held-out sums a single run's evaluation takes: next-token NLL for lm and sft,
        the objective's own loss and metrics for dpo (`objective_eval.py`)."""
        if base.train.objective not in OBJECTIVE_EVALS:
            return lm_sums(state.params, batch)
        config = _with_numbers(base, member_numbers)
        frozen = reference(state)
        kwargs = {} if frozen is None else {"reference": frozen}
        return make_objective(config, forward)(state.params, batch, **kwargs)

    batch_axes = nn.logical_to_mesh_axes(BATCH_AXES, rules)
    batches = NamedSharding(mesh, PartitionSpec(axis, *batch_axes))
    replicated = NamedSharding(mesh, PartitionSpec())
    jitted = jax.jit(ensemble_step, in_shardings=(shardings, batches),
                     out_shardings=(shardings, replicated), donate_argnums=0)
    sums = jax.jit(lambda states, batch: jax.vmap(member_eval, spmd_axis_name=axis)(
        states, batch, numbers), in_shardings=(shardings, batches), out_shardings=replicated)

    def in_context(fn):
        def run(*args):
            with sharding_context(mesh, rules):
                return fn(*args)
        return run

    return EnsembleTraining(configs, mesh, rules, state, shardings, in_context(jitted),
                            in_context(sums), batches)
