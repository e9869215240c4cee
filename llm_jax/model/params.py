"""Creating and measuring parameter pytrees without hand-written shape bookkeeping."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from llm_jax.config import ModelConfig
from llm_jax.model.transformer import Transformer

PyTree = dict


def _dummy_tokens(config: ModelConfig) -> jnp.ndarray:
    return jnp.zeros((1, min(8, config.max_seq_len)), jnp.int32)


def init_boxed_params(config: ModelConfig, rng: jax.Array) -> PyTree:
    """Parameters wrapped in `nn.LogicallyPartitioned` boxes that carry their axis names."""
    return Transformer(config).init(rng, _dummy_tokens(config))["params"]


def init_params(config: ModelConfig, rng: jax.Array) -> PyTree:
    """Plain parameter arrays on the default device (use `parallel` for sharded init)."""
    return nn.unbox(init_boxed_params(config, rng))


def abstract_params(config: ModelConfig) -> PyTree:
    """Shapes and dtypes of every parameter, computed without allocating any."""
    return nn.unbox(jax.eval_shape(lambda: init_boxed_params(config, jax.random.key(0))))


def logical_axes(config: ModelConfig) -> PyTree:
    """The logical axis names of every parameter, as `PartitionSpec`s of names."""
    boxed = jax.eval_shape(lambda: init_boxed_params(config, jax.random.key(0)))
    return nn.get_partition_spec(boxed)


def count_params(config: ModelConfig) -> int:
    return sum(x.size for x in jax.tree.leaves(abstract_params(config)))
