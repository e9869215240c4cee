"""The sharding context: flax's logical constraints resolve against the current mesh
(`jax.set_mesh`), so activations land where the rules say, without deprecated APIs."""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from llm_jax.config import load_config
from llm_jax.parallel.mesh import make_mesh
from llm_jax.parallel.rules import axis_rules
from llm_jax.parallel.sharding import sharding_context


def _constrained(x):
    return nn.with_logical_constraint(x * 2, ("act_batch", "act_embed"))


def test_logical_constraints_apply_under_the_current_mesh():
    config = load_config("tiny", ["mesh.data=2", "mesh.fsdp=4"])
    mesh, rules = make_mesh(config), axis_rules(config.mesh.rules)
    x = jnp.arange(8 * 16, dtype=jnp.float32).reshape(8, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        with sharding_context(mesh, rules):
            y = jax.jit(_constrained)(x)
    assert y.sharding.is_equivalent_to(NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None)), 2)
    assert len({shard.device for shard in y.addressable_shards}) == 8
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x) * 2)


def test_without_the_context_constraints_are_no_ops():
    y = jax.jit(_constrained)(jnp.ones((8, 16)))
    assert len(y.sharding.device_set) == 1
