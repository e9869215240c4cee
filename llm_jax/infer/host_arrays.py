"""Moving batches between the host and a mesh that may span several processes.

Every process holds the whole batch (they all read the same prompts or documents), builds the
same global array from it, and reads results back whole, so every process runs the same
loop with the same number of iterations.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec, Sharding


def global_batch(array: np.ndarray, sharding: Sharding | None) -> jax.Array:
    """`array` (the same on every process) as one global array placed on `sharding` (on the
    default device without one)."""
    array = np.asarray(array)
    if sharding is None:
        return jax.numpy.asarray(array)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def to_host(value) -> np.ndarray:
    """The whole of `value` as numpy on every process, gathering shards held elsewhere."""
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        if value.is_fully_replicated:
            return np.asarray(value.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(value, tiled=True))
    return np.asarray(value)


def every_process_rows(local: np.ndarray) -> np.ndarray:
    """Every process's `local` rows (the same shape on each), joined in process order."""
    if jax.process_count() == 1:
        return np.asarray(local)
    return np.asarray(multihost_utils.process_allgather(np.asarray(local), tiled=True))


def layer_to_host(stacked, layer: int) -> np.ndarray:
    """One layer of a stacked [layers, ...] parameter, whole on every process: only that
    layer is gathered, however the stack is sharded."""
    if not isinstance(stacked, jax.Array):
        return np.asarray(stacked[layer])
    return to_host(_replicated_layer(stacked, np.int32(layer)))


@jax.jit
def _index(stacked: jax.Array, layer: jax.Array) -> jax.Array:
    return jax.lax.dynamic_index_in_dim(stacked, layer, keepdims=False)


def _replicated_layer(stacked: jax.Array, layer: np.int32) -> jax.Array:
    sharding = stacked.sharding
    if isinstance(sharding, NamedSharding):
        replicated = NamedSharding(sharding.mesh, PartitionSpec())
        index = jax.jit(_index, out_shardings=replicated)
        return index(stacked, global_batch(np.asarray(layer), replicated))
    return _index(stacked, layer)


def is_main_process() -> bool:
    """Whether this process writes output (process 0 of a multi-process run)."""
    return jax.process_index() == 0
