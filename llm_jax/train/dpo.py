"""Direct preference optimization: the policy is trained on pairs against a frozen reference.

With implicit rewards r = beta * (log pi(y|x) - log pi_ref(y|x)) summed over the reply's
tokens and Delta = (log-ratio of chosen) - (log-ratio of rejected), the per-pair losses are

    sigmoid  -log sigmoid(beta * Delta)                        Rafailov et al. 2023, eq. 7
    hinge    max(0, 1 - beta * Delta)                          SLiC-HF, Zhao et al. 2023
    ipo      (Delta_avg - 1 / (2 beta))^2                      Azar et al. 2023, eq. 17
    robust   ((1 - e) l(Delta) - e l(-Delta)) / (1 - 2e)       rDPO, Chowdhury et al. 2024
             with l(x) = -log sigmoid(beta * x) and e = dpo.label_smoothing

IPO's log-ratios are averaged over each reply's tokens (Delta_avg) rather than summed, as TRL
does after confirming it with the IPO authors, so beta means the same for long and short
replies. The reference is the initial policy: a frozen copy kept in the train state
(`dpo.reference=model`), or its log-probs computed in one pass before training and carried in
the batches (`dpo.reference=precomputed`), which saves the memory of a second model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from llm_jax.config import Config, DpoConfig
from llm_jax.train.logprobs import sequence_logprobs
from llm_jax.train.objectives import Batch, Forward, Objective
from llm_jax.train.preference_batch import both_sides, model_inputs, real_pairs, split_sides


def dpo_losses(chosen_logps: jnp.ndarray, rejected_logps: jnp.ndarray,
               ref_chosen_logps: jnp.ndarray, ref_rejected_logps: jnp.ndarray,
               cfg: DpoConfig, chosen_tokens: jnp.ndarray | None = None,
               rejected_tokens: jnp.ndarray | None = None) -> jnp.ndarray:
    """Per-pair loss [B] from summed reply log-probs of the policy and the reference; IPO also
    needs each reply's token count."""
    chosen_ratio = chosen_logps - ref_chosen_logps
    rejected_ratio = rejected_logps - ref_rejected_logps
    delta = chosen_ratio - rejected_ratio
    beta = cfg.beta
    if cfg.loss == "sigmoid":
        return -jax.nn.log_sigmoid(beta * delta)
    if cfg.loss == "hinge":
        return jax.nn.relu(1.0 - beta * delta)
    if cfg.loss == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("the ipo loss needs the replies' token counts")
        averaged = (chosen_ratio / jnp.maximum(chosen_tokens, 1.0)
                    - rejected_ratio / jnp.maximum(rejected_tokens, 1.0))
        return jnp.square(averaged - 1.0 / (2.0 * beta))
    if cfg.loss == "robust":
        eps = cfg.label_smoothing
        clean = -(1.0 - eps) * jax.nn.log_sigmoid(beta * delta)
        flipped = -eps * jax.nn.log_sigmoid(-beta * delta)
        return (clean - flipped) / (1.0 - 2.0 * eps)
    raise ValueError(f"unknown DPO loss {cfg.loss!r}")


def reply_logprobs(forward: Forward, params, batch: Batch) -> jnp.ndarray:
    """Summed log-probs of each side's reply tokens under `params`: [2B]."""
    tokens = both_sides(batch, "tokens")
    logps = sequence_logprobs(forward(params, model_inputs(batch)), tokens)
    return jnp.sum(logps * both_sides(batch, "mask"), axis=1)


def dpo_objective(config: Config, forward: Forward) -> Objective:
    cfg = config.dpo

    def objective(params, batch: Batch, reference=None):
        policy = split_sides(reply_logprobs(forward, params, batch))
        if "chosen_ref_logps" in batch:
            ref = split_sides(jnp.sum(both_sides(batch, "ref_logps"), axis=1))
        elif reference is not None:
            ref = split_sides(reply_logprobs(forward, jax.lax.stop_gradient(reference), batch))
        else:
            raise ValueError("dpo needs the reference: a frozen copy in the train state, or "
                             "precomputed log-probs in the batch")
        lengths = split_sides(jnp.sum(both_sides(batch, "mask"), axis=1))
        losses = dpo_losses(*policy, *ref, cfg, *lengths)
        valid = real_pairs(batch)
        chosen_reward = cfg.beta * (policy[0] - ref[0])
        rejected_reward = cfg.beta * (policy[1] - ref[1])
        sums = {
            "denominator": jnp.sum(valid),
            "rewards_chosen": jnp.sum(chosen_reward * valid),
            "rewards_rejected": jnp.sum(rejected_reward * valid),
            "rewards_margins": jnp.sum((chosen_reward - rejected_reward) * valid),
            "rewards_accuracies": jnp.sum((chosen_reward > rejected_reward) * valid),
            "logps_chosen": jnp.sum(policy[0] * valid),
            "logps_rejected": jnp.sum(policy[1] * valid),
            # log pi / pi_ref of each reply: how far the policy moved, comparable across betas
            "logratio_chosen": jnp.sum((policy[0] - ref[0]) * valid),
            "logratio_rejected": jnp.sum((policy[1] - ref[1]) * valid),
        }
        return jnp.sum(losses * valid), sums

    return objective
