"""Per-token log-probabilities of given tokens, the quantity DPO and PPO are written in."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_logprobs(logits: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
    """log p(targets) [B, T] from fp32 logits [B, T, V], without materializing log_softmax."""
    logits = logits.astype(jnp.float32)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


def sequence_logprobs(logits: jnp.ndarray, tokens: jnp.ndarray) -> jnp.ndarray:
    """log p(tokens[:, t] | tokens[:, :t]) [B, T] from logits of the same rows; position 0,
    which nothing predicts, is 0. Aligned with the tokens, so masks over tokens apply as they
    are."""
    logps = token_logprobs(logits[:, :-1], tokens[:, 1:])
    return jnp.pad(logps, ((0, 0), (1, 0)))


def entropy(logits: jnp.ndarray) -> jnp.ndarray:
    """Entropy of each position's next-token distribution [B, T]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)
