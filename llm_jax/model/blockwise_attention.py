"""Causal attention in query blocks with a hand-written backward pass: XLA's fastest path on CPU.

Autodiff of the plain einsum kernel materializes the full [batch, heads, T, T] score tensor
several times in awkward layouts (a transpose per matmul of the backward pass) and computes
the upper triangle that the causal mask throws away. Here queries of one key/value group are
laid out row-major as [batch, kv_heads, T * group, head_dim] so that every matmul of the
forward and backward pass reads its operands in place, and query block `i` only meets the
keys up to its own end, which skips almost half of the work. The forward pass keeps the
unnormalized exponentials and the row sums, the backward pass reuses them (FlashAttention's
gradient, Dao et al. 2022, Appendix B.2, without the tiling over keys). With a soft cap the
backward pass recomputes each block's scores for the cap's derivative, 1 - tanh², rather
than keep a second score tensor.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

BLOCK = 64  # query positions per block: score blocks stay in the CPU's cache


def _group_rows(x: jnp.ndarray, kv_heads: int) -> jnp.ndarray:
    """[B, T, H, D] -> [B, KV, T * G, D]: the G query heads sharing a key sit on adjacent rows."""
    batch, length, heads, dim = x.shape
    x = x.reshape(batch, length, kv_heads, heads // kv_heads, dim)
    return x.transpose(0, 2, 1, 3, 4).reshape(batch, kv_heads, -1, dim)


def _ungroup_rows(x: jnp.ndarray, length: int) -> jnp.ndarray:
    """The inverse of `_group_rows`."""
    batch, kv_heads, rows, dim = x.shape
    x = x.reshape(batch, kv_heads, length, rows // length, dim)
    return x.transpose(0, 2, 1, 3, 4).reshape(batch, length, -1, dim)


def _blocks(length: int) -> list[tuple[int, int]]:
    """(first, end) query positions of each block; keys [0, end) are visible to the block."""
    count = math.ceil(length / BLOCK)
    return [(i * BLOCK, min((i + 1) * BLOCK, length)) for i in range(count)]


def _scores(block_rows, keys, softcap: float):
    """Scaled scores of a block of query rows against `keys`, soft-capped if asked."""
    raw = jnp.einsum("bkrd,bksd->bkrs", block_rows, keys, preferred_element_type=jnp.float32)
    return softcap * jnp.tanh(raw / softcap) if softcap else raw


def _forward(q, k, v, mask, softcap):
    _, length, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    group = heads // kv_heads
    rows = _group_rows(q * jnp.asarray(head_dim**-0.5, q.dtype), kv_heads)
    keys, values = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    outs, exps, inv_sums = [], [], []
    for first, end in _blocks(length):
        block_rows = rows[:, :, first * group:end * group]
        scores = _scores(block_rows, keys[:, :, :end], softcap)
        scores = scores.reshape(*scores.shape[:2], end - first, group, end)
        visible = mask[:, None, first:end, None, :end]
        scores = jnp.where(visible, scores, jnp.finfo(jnp.float32).min)
        exp = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
        exp = exp.reshape(*exp.shape[:2], -1, end)
        inv_sum = 1.0 / jnp.sum(exp, axis=-1, keepdims=True)
        out = jnp.einsum("bkrs,bksd->bkrd", exp.astype(v.dtype), values[:, :, :end],
                         preferred_element_type=jnp.float32)
        outs.append(out * inv_sum)
        exps.append(exp)
        inv_sums.append(inv_sum)
    out = jnp.concatenate(outs, axis=2)
    residuals = (rows, keys, values, tuple(exps), jnp.concatenate(inv_sums, axis=2), out)
    return _ungroup_rows(out, length).astype(q.dtype), residuals


def _backward(softcap, residuals, grad_out):
    rows, keys, values, exps, inv_sums, out = residuals
    kv_heads, length, head_dim = keys.shape[1], keys.shape[2], keys.shape[3]
    group = rows.shape[2] // length
    grad_rows = _group_rows(grad_out, kv_heads).astype(jnp.float32)
    # d softmax: dS = P * (dP - rowsum(dO * O)), with P = exp * inv_sum.
    delta = jnp.sum(grad_rows * out, axis=-1, keepdims=True)
    grad_q_blocks = []
    grad_k = jnp.zeros(keys.shape, jnp.float32)
    grad_v = jnp.zeros(values.shape, jnp.float32)
    for (first, end), exp in zip(_blocks(length), exps):
        span = slice(first * group, end * group)
        grad_block = grad_rows[:, :, span]
        inv_sum = inv_sums[:, :, span]
        grad_v = grad_v.at[:, :, :end].add(
            jnp.einsum("bkrs,bkrd->bksd", exp, grad_block * inv_sum))
        grad_probs = jnp.einsum("bkrd,bksd->bkrs", grad_block, values[:, :, :end],
                                preferred_element_type=jnp.float32)
        grad_scores = exp * (grad_probs - delta[:, :, span]) * inv_sum
        if softcap:
            tanh = _scores(rows[:, :, span], keys[:, :, :end], softcap) / softcap
            grad_scores = grad_scores * (1 - tanh * tanh)
        grad_q_blocks.append(jnp.einsum("bkrs,bksd->bkrd", grad_scores, keys[:, :, :end],
                                        preferred_element_type=jnp.float32))
        grad_k = grad_k.at[:, :, :end].add(
            jnp.einsum("bkrs,bkrd->bksd", grad_scores, rows[:, :, span],
                       preferred_element_type=jnp.float32))
    grad_q = _ungroup_rows(jnp.concatenate(grad_q_blocks, axis=2), length) * head_dim**-0.5
    return (grad_q.astype(rows.dtype), grad_k.transpose(0, 2, 1, 3).astype(keys.dtype),
            grad_v.transpose(0, 2, 1, 3).astype(values.dtype), None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def blockwise_attention(q, k, v, mask, softcap: float = 0.0):
    """Causal grouped-query attention for q_len == kv_len; `mask` [B, T, T] must be causal
    (blocks never look at keys after their last query) and may add segment boundaries and a
    sliding window."""
    return _forward(q, k, v, mask, softcap)[0]


blockwise_attention.defvjp(_forward, _backward)
