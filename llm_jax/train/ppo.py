"""The PPO update on a minibatch of rollouts (Schulman et al. 2017), and its GRPO variant.

Rollout rows [B, T], aligned with the tokens (see `rollout.py`):

    tokens, positions, segment_ids   the prompt and the sampled response, right-padded
    response_mask                    1 on response tokens
    old_logprobs, ref_logprobs       log-probs of each token under the rollout policy and the
                                     reference
    old_values, returns, advantages  critic estimates, GAE targets, (whitened) advantages
    scores, kl                       the score on the last response token; the per-token
                                     log-ratio to the reference (for metrics)

Per token: the clipped surrogate max(-A r, -A clip(r, 1 - c, 1 + c)) with r = pi / pi_old; for
PPO, plus vf_coef times the clipped value loss 0.5 max((V - R)^2, (V_clip - R)^2); for GRPO
(no critic), plus kl_coef times the k3 estimate of KL(pi || pi_ref). Each response's tokens
are averaged, then responses are averaged (`denominator` counts them), so metrics such as the
mean score and the mean sequence KL come out of the same sums.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from llm_jax.config import Config
from llm_jax.model.heads import VALUE_HEAD, apply_head
from llm_jax.model.output_head import lm_logits
from llm_jax.train.logprobs import entropy, sequence_logprobs
from llm_jax.train.objectives import Batch, Forward, Objective


def forward_batch(batch: Batch) -> Batch:
    return {"inputs": batch["tokens"], "positions": batch["positions"],
            "segment_ids": batch["segment_ids"]}


def token_values(config: Config, params, hidden: jnp.ndarray) -> jnp.ndarray:
    """The critic's value of each token before it is generated: the head on the hidden state
    of the position that predicts it, so aligned with the tokens. [B, T]"""
    values = apply_head(config.model, params[VALUE_HEAD], hidden)
    return jnp.pad(values[:, :-1], ((0, 0), (1, 0)))


def policy_outputs(config: Config, forward: Forward, params, batch: Batch):
    """(log-probs of the tokens at the sampling temperature, values or None, logits)."""
    hidden = forward(params, forward_batch(batch), return_hidden=True)
    logits = lm_logits(config.model, params, hidden) / config.ppo.temperature
    logps = sequence_logprobs(logits, batch["tokens"])
    values = token_values(config, params, hidden) if VALUE_HEAD in params else None
    return logps, values, logits


def clipped_policy_loss(logps, old_logps, advantages, clip_range: float):
    """(per-token loss, per-token 1.0 where the ratio was clipped)."""
    ratio = jnp.exp(logps - old_logps)
    unclipped = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return jnp.maximum(unclipped, clipped), (clipped > unclipped).astype(jnp.float32)


def clipped_value_loss(values, old_values, returns, clip_range: float):
    clipped = old_values + jnp.clip(values - old_values, -clip_range, clip_range)
    return 0.5 * jnp.maximum(jnp.square(values - returns), jnp.square(clipped - returns))


def ppo_objective(config: Config, forward: Forward) -> Objective:
    cfg = config.ppo

    def objective(params, batch: Batch, reference=None):
        """`reference` (in the train state) was already used by the rollout: `ref_logprobs`."""
        del reference
        mask = batch["response_mask"]
        logps, values, logits = policy_outputs(config, forward, params, batch)
        pg, clipped = clipped_policy_loss(logps, batch["old_logprobs"], batch["advantages"],
                                          cfg.clip_range)
        per_token = {"policy_loss": pg, "clipfrac": clipped,
                     "approx_kl": 0.5 * jnp.square(logps - batch["old_logprobs"]),
                     "entropy": jax.lax.stop_gradient(entropy(logits))}
        loss = pg
        if cfg.algorithm == "ppo":
            vf = clipped_value_loss(values, batch["old_values"], batch["returns"],
                                    cfg.value_clip_range)
            per_token["value_loss"] = vf
            loss = loss + cfg.vf_coef * vf
        else:
            log_ratio = batch["ref_logprobs"] - logps
            k3 = jnp.exp(log_ratio) - log_ratio - 1.0
            per_token["kl_k3"] = k3
            loss = loss + cfg.kl_coef * k3
        tokens = jnp.sum(mask, axis=1)
        valid = (tokens > 0).astype(jnp.float32)
        weight = valid / jnp.maximum(tokens, 1.0)  # each response's token mean

        def per_response(x):
            return jnp.sum(jnp.sum(x * mask, axis=1) * weight)

        sums = {name: per_response(value) for name, value in per_token.items()}
        sums.update({
            "denominator": jnp.sum(valid),
            "score": jnp.sum(batch["scores"] * valid[:, None]),
            "kl": jnp.sum(batch["kl"] * mask),
            "response_length": jnp.sum(tokens),
        })
        return per_response(loss), sums

    return objective
