"""The decoding cache: keys and values of every layer, as an explicit pytree.

`Transformer.apply(..., cache=cache)` writes the new tokens' keys and values at slot
`cache.index` and returns the updated cache; nothing is hidden in Flax variable collections.
Slots, not positions, index the cache: a left-padded prompt's padding occupies slots with
segment id 0, which no real token attends to, so rows of different lengths share one write
slot per step while each keeps its own RoPE positions.
"""

from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from llm_jax.config import ModelConfig

# Sharded like the attention activations: batch over data parallelism, kv heads over tensor.
CACHE_KV_AXES = (None, "act_batch", "act_length", "act_kv_heads", "act_head_dim")
LAYER_KV_AXES = CACHE_KV_AXES[1:]
CACHE_SEGMENT_AXES = ("act_batch", "act_length")


@flax.struct.dataclass
class KVCache:
    """k, v: [layers, batch, slots, kv_heads, head_dim]; segment_ids: [batch, slots], 0 where
    empty or padding; index: the next slot to write, shared by all rows."""

    k: jax.Array
    v: jax.Array
    segment_ids: jax.Array
    index: jax.Array

    @property
    def slots(self) -> int:
        return self.k.shape[2]


def init_cache(config: ModelConfig, batch: int, slots: int) -> KVCache:
    """An empty cache in the model's compute dtype."""
    shape = (config.num_layers, batch, slots, config.num_kv_heads, config.resolved_head_dim)
    zeros = jnp.zeros(shape, jnp.dtype(config.dtype))
    return KVCache(k=zeros, v=zeros, segment_ids=jnp.zeros((batch, slots), jnp.int32),
                   index=jnp.zeros((), jnp.int32))


def cache_logical_axes() -> KVCache:
    """Logical axis names of each cache field, for `nn.logical_to_mesh_sharding`."""
    spec = jax.sharding.PartitionSpec
    return KVCache(k=spec(*CACHE_KV_AXES), v=spec(*CACHE_KV_AXES),
                   segment_ids=spec(*CACHE_SEGMENT_AXES), index=spec())


def cache_shardings(mesh: Mesh, rules) -> KVCache:
    """`NamedSharding`s that place a cache on `mesh` under the logical axis `rules`."""
    return nn.logical_to_mesh_sharding(cache_logical_axes(), mesh, rules)
