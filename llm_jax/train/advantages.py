"""Advantages for policy-gradient updates, over rollout rows [B, T] aligned with the tokens.

Per-token arrays hold a value only on response tokens (`mask` 1); the value of token t is the
critic's estimate before generating it, the reward of token t what generating it earned.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def gae(rewards: jnp.ndarray, values: jnp.ndarray, mask: jnp.ndarray, gamma: float,
        lam: float) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Generalized advantage estimation (Schulman et al. 2016): (advantages, returns).

    delta_t = r_t + gamma V_{t+1} - V_t, with V after the last response token = 0, and
    A_t = delta_t + gamma lam A_{t+1}; returns = A + V, the value targets.
    """
    mask = mask.astype(jnp.float32)
    values = values * mask
    next_values = jnp.pad(values[:, 1:], ((0, 0), (0, 1)))
    deltas = (rewards + gamma * next_values - values) * mask

    def backward(carry, step):
        delta, m = step
        advantage = (delta + gamma * lam * carry) * m
        return advantage, advantage

    _, advantages = jax.lax.scan(backward, jnp.zeros(rewards.shape[0], jnp.float32),
                                 (deltas.T, mask.T), reverse=True)
    advantages = advantages.T
    return advantages, (advantages + values) * mask


def whiten(values: jnp.ndarray, mask: jnp.ndarray, eps: float = 1e-8) -> jnp.ndarray:
    """(values - mean) / std over the masked entries of the whole rollout."""
    mask = mask.astype(jnp.float32)
    count = jnp.maximum(jnp.sum(mask), 1.0)
    mean = jnp.sum(values * mask) / count
    var = jnp.sum(jnp.square(values - mean) * mask) / count
    return (values - mean) * jax.lax.rsqrt(var + eps) * mask


def group_advantages(scores: jnp.ndarray, group_size: int, eps: float = 1e-4) -> jnp.ndarray:
    """GRPO (Shao et al. 2024): each score normalized within its group of `group_size`
    consecutive rows (the responses to one prompt): (s - mean) / (std + eps). [B]"""
    groups = scores.reshape(-1, group_size)
    mean = jnp.mean(groups, axis=1, keepdims=True)
    std = jnp.std(groups, axis=1, keepdims=True)
    return ((groups - mean) / (std + eps)).reshape(-1)


def kl_rewards(scores: jnp.ndarray, logprobs: jnp.ndarray, ref_logprobs: jnp.ndarray,
               mask: jnp.ndarray, kl_coef: float) -> jnp.ndarray:
    """Per-token rewards of RLHF (Ziegler et al. 2019; Ouyang et al. 2022): a KL penalty
    -kl_coef (log pi - log pi_ref) on every response token, and the sequence's score [B] on
    its last one."""
    mask = mask.astype(jnp.float32)
    rewards = -kl_coef * (logprobs - ref_logprobs) * mask
    length = jnp.sum(mask, axis=1)
    last = jnp.argmax(mask, axis=1) + jnp.maximum(length - 1, 0).astype(jnp.int32)
    end = jax.nn.one_hot(last, mask.shape[1], dtype=jnp.float32) * (length > 0)[:, None]
    return rewards + end * scores[:, None]
