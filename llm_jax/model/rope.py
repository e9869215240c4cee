"""Rotary position embeddings in the Hugging Face rotate-half convention, with Llama 3.1 scaling."""

from __future__ import annotations

import math

import jax.numpy as jnp

from llm_jax.config import RopeScalingConfig


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScalingConfig) -> jnp.ndarray:
    """Per-pair rotation speeds; `scaling.factor > 0` applies the `llama3` rope_scaling rule."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    if not scaling.factor:
        return inv_freq
    old_len = scaling.original_max_position_embeddings
    low_freq_wavelen = old_len / scaling.low_freq_factor
    high_freq_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are slowed by `factor`, short ones kept, the band between interpolated.
    scaled = jnp.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return jnp.where(is_medium, smoothed, scaled)


def apply_rope(x: jnp.ndarray, positions: jnp.ndarray, inv_freq: jnp.ndarray) -> jnp.ndarray:
    """Rotates `x` [batch, length, heads, head_dim] by `positions` [batch, length].

    Angles and the rotation are computed in fp32, then cast back, as transformers does.
    """
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, head_dim / 2]
    cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
    # Each half rotated against the other, written as two halves joined once: a
    # concatenation of the rotated copy before the multiply costs 6x more on CPU (fwd + bwd).
    first, second = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = [first * cos - second * sin, second * cos + first * sin]
    return jnp.concatenate(rotated, axis=-1).astype(x.dtype)
