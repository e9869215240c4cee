"""Choosing the next token: greedy, temperature, top-k and top-p (nucleus) sampling.

The knobs are traced arrays, not static arguments, so one compiled decode step serves every
setting; temperature 0 means greedy (argmax of the unscaled logits).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from llm_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    """How many tokens to generate and how to draw them."""

    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 is greedy
    top_k: int = 0  # 0 keeps every token
    top_p: float = 1.0  # 1 keeps every token
    seed: int = 0
    stop: tuple[str, ...] = ()  # generation of a row ends once its text contains one of these

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise UserError(f"--max-new-tokens={self.max_new_tokens} must be at least 1")
        if self.temperature < 0:
            raise UserError(f"--temperature={self.temperature} must be >= 0 (0 is greedy)")
        if self.top_k < 0:
            raise UserError(f"--top-k={self.top_k} must be >= 0 (0 disables it)")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top-p={self.top_p} must be in (0, 1] (1 disables it)")


def filter_top_k(logits: jax.Array, top_k: jax.Array) -> jax.Array:
    """Sets every logit below the k-th largest of its row to -inf; k = 0 keeps all."""
    vocab = logits.shape[-1]
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    descending = -jnp.sort(-logits, axis=-1)
    kth = jnp.take_along_axis(descending, jnp.broadcast_to(k - 1, logits.shape[:-1])[..., None],
                              axis=-1)
    return jnp.where(logits < kth, -jnp.inf, logits)


def filter_top_p(logits: jax.Array, top_p: jax.Array) -> jax.Array:
    """Keeps the smallest set of most likely tokens whose probability reaches `top_p`."""
    descending = -jnp.sort(-logits, axis=-1)
    probs = jax.nn.softmax(descending, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = (mass_before < top_p) | (top_p >= 1.0)
    keep = keep.at[..., 0].set(True)
    threshold = jnp.min(jnp.where(keep, descending, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits < threshold, -jnp.inf, logits)


def sample_tokens(logits: jax.Array, key: jax.Array, temperature: jax.Array,
                  top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Next tokens [batch] from fp32 logits [batch, vocab].

    `lax.cond` runs only the branch in use: greedy decoding and unfiltered sampling skip the
    vocabulary sorts that top-k and top-p need.
    """
    def draw(logits):
        scaled = logits / temperature
        scaled = jax.lax.cond(top_k > 0, filter_top_k, lambda x, _: x, scaled, top_k)
        scaled = jax.lax.cond(top_p < 1.0, filter_top_p, lambda x, _: x, scaled, top_p)
        return jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)

    def greedy(logits):
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    return jax.lax.cond(temperature > 0, draw, greedy, logits)
