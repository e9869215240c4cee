"""Output projection and cross-entropy fused over chunks of the sequence.

The [batch, length, vocab] logits are the largest activation of a language model (8 GB in
fp32 for 8 x 2048 tokens of Llama 3's 128k vocabulary). Here a `lax.scan` walks the sequence
in chunks: each chunk's logits are made, reduced to the loss and, when differentiated, turned
at once into that chunk's gradients for the hidden states and the output kernel, since the
gradient of a summed cross-entropy with respect to its logits (softmax - one-hot) needs no
upstream value but a scalar. Only the gradients are kept for the backward pass, so the full
logits never exist and no chunk is computed twice (the idea of Wijmans et al. 2024, "Cut
Your Losses in Large-Vocabulary Language Models", in plain JAX).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from llm_jax.model.output_head import LOGIT_AXES


def chunk_length(length: int, chunk: int) -> int:
    """The largest divisor of `length` that is at most `chunk` positions."""
    return max(c for c in range(1, min(chunk, length) + 1) if length % c == 0)


def _by_chunk(x: jnp.ndarray, size: int) -> jnp.ndarray:
    """[B, T, ...] -> [T / size, B, size, ...]: the scan walks the sequence, batch stays put."""
    batch, length = x.shape[:2]
    return x.reshape(batch, length // size, size, *x.shape[2:]).swapaxes(0, 1)


def _from_chunks(x: jnp.ndarray) -> jnp.ndarray:
    chunks, batch, size = x.shape[:3]
    return x.swapaxes(0, 1).reshape(batch, chunks * size, *x.shape[3:])


def _chunk_loss(hidden, kernel, targets, mask, z_loss: float, with_grads: bool):
    """Sums of NLL and z-loss over one chunk; with `with_grads`, d(sum)/d(hidden, kernel)."""
    logits = jnp.einsum("bcd,dv->bcv", hidden, kernel, preferred_element_type=jnp.float32)
    logits = nn.with_logical_constraint(logits, LOGIT_AXES)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    sums = (jnp.sum((log_z - target_logits) * mask), z_loss * jnp.sum(jnp.square(log_z) * mask))
    if not with_grads:
        return sums, None
    probs = jnp.exp(logits - log_z[..., None])
    is_target = targets[..., None] == jax.lax.broadcasted_iota(targets.dtype, logits.shape, 2)
    grad_logits = [(probs - is_target) * mask[..., None]]  # of the NLL sum, then the z-loss's
    if z_loss:
        grad_logits.append((2 * z_loss) * (log_z * mask)[..., None] * probs)
    grads = []
    for grad in grad_logits:
        grad = grad.astype(hidden.dtype)
        grads.append((jnp.einsum("bcv,dv->bcd", grad, kernel),
                      jnp.einsum("bcd,bcv->dv", hidden, grad, preferred_element_type=jnp.float32)))
    return sums, grads


def _scan(hidden, kernel, targets, mask, z_loss: float, chunk: int, with_grads: bool):
    size = chunk_length(hidden.shape[1], chunk)
    xs = (_by_chunk(hidden, size), _by_chunk(targets, size), _by_chunk(mask, size))

    def body(carry, chunk_xs):
        sums, grads = _chunk_loss(chunk_xs[0], kernel, *chunk_xs[1:], z_loss, with_grads)
        carry = jax.tree.map(jnp.add, carry, (sums, [g[1] for g in grads or []]))
        return carry, [g[0] for g in grads or []]

    outputs = (1 + bool(z_loss)) if with_grads else 0
    kernel_grads = [jnp.zeros(kernel.shape, jnp.float32)] * outputs
    init = ((jnp.zeros(()), jnp.zeros(())), kernel_grads)
    (sums, kernel_grads), hidden_grads = jax.lax.scan(body, init, xs)
    return sums, [(_from_chunks(h), k) for h, k in zip(hidden_grads, kernel_grads)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def fused_cross_entropy_sums(hidden, kernel, targets, mask, z_loss: float = 0.0,
                             chunk: int = 256):
    """(sum of masked NLL, sum of masked z-loss log(Z)^2 terms) of `hidden` [B, T, D] projected
    by `kernel` [D, V], computed `chunk` positions at a time; equal to
    `cross_entropy_sums(hidden @ kernel, targets, mask, z_loss)`."""
    return _scan(hidden, kernel, targets, mask, z_loss, chunk, with_grads=False)[0]


def _forward(hidden, kernel, targets, mask, z_loss, chunk):
    sums, grads = _scan(hidden, kernel, targets, mask, z_loss, chunk, with_grads=True)
    # Gradients in the dtypes of what they differentiate (kernel ones were summed in fp32).
    return sums, [(h.astype(hidden.dtype), k.astype(kernel.dtype)) for h, k in grads]


def _backward(z_loss, chunk, grads, cotangents):
    scaled = [(g.astype(h.dtype) * h, g.astype(k.dtype) * k)
              for g, (h, k) in zip(cotangents, grads)]
    grad_hidden, grad_kernel = (functools.reduce(jnp.add, parts) for parts in zip(*scaled))
    return grad_hidden, grad_kernel, None, None


fused_cross_entropy_sums.defvjp(_forward, _backward)
