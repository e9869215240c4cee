"""Frozen base weights stored in 8 or 4 bits (QLoRA's base model), dequantized when used.

A matmul kernel [*inputs, *outputs] is quantized as the matrix [K, N] it multiplies with (K the
product of its input dimensions, N of its outputs), so each method is one 2-D rule:

    int8  codes = round(W / s), s = max |W[:, n]| / 127: one scale per output column
    nf4   blocks of 64 consecutive values share their absmax; each value is the index of the
          nearest of 16 NormalFloat levels (Dettmers et al. 2023, QLoRA), two indices packed
          per byte along the blocked axis. 4.5 bits per weight with fp32 absmax (QLoRA's
          double quantization of the absmax, 0.37 bits more saved, is not done).

nf4 blocks run along the matrix's axis that is not `embed` (`along_outputs` for q, k, v, gate,
up; along the inputs for o and down), which FSDP never shards: a device then holds whole
blocks on any fsdp size, and only the tensor axis must divide the blocks.

Leading dimensions (the `layers` axis of the scanned stack) are kept, so a quantized stack is
still sliced layer by layer, and dequantization happens inside each layer's step.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from llm_jax.config import NF4_BLOCK

# The NormalFloat4 levels of QLoRA (bitsandbytes' NF4 table): quantiles of N(0, 1) scaled to
# [-1, 1], with an exact zero. tests/test_quantize.py rebuilds them from the paper's recipe.
NF4_LEVELS = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], np.float32)

Quantized = dict[str, jnp.ndarray]  # {"codes": ..., "scale": ...}


def as_matrix(w: jnp.ndarray, in_dims: int, out_dims: int) -> jnp.ndarray:
    """[*lead, *inputs, *outputs] -> [*lead, K, N]."""
    lead = w.ndim - in_dims - out_dims
    inputs, outputs = w.shape[lead:lead + in_dims], w.shape[lead + in_dims:]
    return w.reshape(*w.shape[:lead], math.prod(inputs), math.prod(outputs))


def _safe(absmax: jnp.ndarray) -> jnp.ndarray:
    return jnp.where(absmax > 0, absmax, 1.0)


def _nf4(matrix: jnp.ndarray) -> Quantized:
    """Blocks along axis -2 of [*lead, K, N]."""
    *lead, k, n = matrix.shape
    blocks = matrix.reshape(*lead, k // NF4_BLOCK, NF4_BLOCK, n)
    absmax = _safe(jnp.max(jnp.abs(blocks), axis=-2))
    normed = blocks / absmax[..., None, :]
    midpoints = (NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2
    index = sum((normed > m).astype(jnp.uint8) for m in midpoints)  # 15 fused comparisons
    pairs = index.reshape(*lead, k // 2, 2, n)
    return {"codes": (pairs[..., 0, :] << 4) | pairs[..., 1, :], "scale": absmax}


def _nf4_values(q: Quantized, dtype) -> jnp.ndarray:
    """The [*lead, K, N] matrix of `_nf4`'s codes."""
    codes, scale = q["codes"], q["scale"]
    *lead, half_k, n = codes.shape
    index = jnp.stack([codes >> 4, codes & 15], axis=-2).reshape(*lead, 2 * half_k, n)
    values = jnp.take(jnp.asarray(NF4_LEVELS, dtype), index.astype(jnp.int32))
    blocks = values.reshape(*lead, scale.shape[-2], NF4_BLOCK, n)
    return (blocks * scale[..., None, :].astype(dtype)).reshape(*lead, 2 * half_k, n)


def _transposed(q: Quantized) -> Quantized:
    return {part: jnp.swapaxes(value, -1, -2) for part, value in q.items()}


def quantize(w: jnp.ndarray, method: str, in_dims: int, out_dims: int,
             along_outputs: bool = False) -> Quantized:
    """The codes and scales of kernel `w` (see the module docstring)."""
    matrix = as_matrix(w.astype(jnp.float32), in_dims, out_dims)
    if method == "int8":
        scale = _safe(jnp.max(jnp.abs(matrix), axis=-2, keepdims=True)) / 127.0
        return {"codes": jnp.round(matrix / scale).astype(jnp.int8), "scale": scale}
    if along_outputs:
        return _transposed(_nf4(jnp.swapaxes(matrix, -1, -2)))
    return _nf4(matrix)


def dequantize(q: Quantized, shape: tuple[int, ...], dtype,
               along_outputs: bool = False) -> jnp.ndarray:
    """The kernel of `shape` (leading dimensions included) that `q` encodes, in `dtype`."""
    if q["codes"].dtype == jnp.int8:
        return (q["codes"].astype(dtype) * q["scale"].astype(dtype)).reshape(shape)
    if along_outputs:
        return jnp.swapaxes(_nf4_values(_transposed(q), dtype), -1, -2).reshape(shape)
    return _nf4_values(q, dtype).reshape(shape)


def quantized_axes(method: str, axes: tuple[str | None, ...], in_dims: int
                   ) -> dict[str, tuple[str | None, ...]]:
    """Logical axes of the codes and scales: the matrix's K keeps the first input's name and
    N the first output's, so each shards as the kernel's leading input and output do."""
    k_name, n_name = axes[0], axes[in_dims]
    scale_k = None if method == "int8" else k_name
    return {"codes": (k_name, n_name), "scale": (scale_k, n_name)}
