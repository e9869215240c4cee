"""From logical axis names to `NamedSharding`s, and a step compiled for a mesh."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llm_jax.config import Config
from llm_jax.parallel.rules import Rules, axis_rules

BATCH_AXES = ("act_batch", "act_length")


@contextlib.contextmanager
def sharding_context(mesh: Mesh, rules: Rules) -> Iterator[None]:
    """The mesh and rules that the model's logical sharding constraints resolve against
    (flax reads the mesh that `jax.set_mesh` makes current)."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def logical_to_shardings(boxed_tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """`NamedSharding`s for a tree whose leaves may be `nn.LogicallyPartitioned` boxes;
    unboxed leaves (step counters, ...) are replicated."""
    return nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed_tree), mesh, rules)


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
    """Batches [batch, length] are split over the data-parallel axes."""
    return NamedSharding(mesh, nn.logical_to_mesh_axes(BATCH_AXES, rules))


def jit_train_step(step: Callable, config: Config, mesh: Mesh, state_shardings: Any):
    """Compiles `step(state, batch)` once for this mesh: explicit in/out shardings, donated
    state, metrics replicated."""
    rules = axis_rules(config.mesh.rules)
    data = batch_sharding(mesh, rules)
    replicated = NamedSharding(mesh, PartitionSpec())
    jitted = jax.jit(step, in_shardings=(state_shardings, data),
                     out_shardings=(state_shardings, replicated), donate_argnums=0)

    def run(state, batch):
        with sharding_context(mesh, rules):
            return jitted(state, batch)

    run.jitted = jitted
    return run
