"""Token-level losses in fp32, returned as sums so that microbatches and shards add exactly."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy_sums(
    logits: jnp.ndarray, targets: jnp.ndarray, mask: jnp.ndarray, z_loss: float = 0.0
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(sum of masked next-token NLL, sum of masked z-loss log(Z)^2 terms)."""
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    nll = (log_z - target_logits) * mask
    return jnp.sum(nll), z_loss * jnp.sum(jnp.square(log_z) * mask)
