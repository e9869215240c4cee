"""Reward model: a scalar head read at each sequence's last token, trained with the
Bradley-Terry loss -log sigmoid(r_chosen - r_rejected) (Ouyang et al. 2022), plus optionally
`reward.center_coef * (r_chosen + r_rejected)^2`, which keeps the scores near zero
(Eisenstein et al. 2023; TRL's center_rewards_coefficient)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from llm_jax.config import Config, ModelConfig
from llm_jax.model.heads import SCORE_HEAD, apply_head, last_token_values
from llm_jax.train.objectives import Batch, Forward, Objective
from llm_jax.train.preference_batch import model_inputs, real_pairs, split_sides


def sequence_scores(config: ModelConfig, forward: Forward, params, batch: Batch) -> jnp.ndarray:
    """The score of each row of a forward batch (`inputs`, `positions`, `segment_ids`): the
    head on the final hidden state of its last real token. [B]"""
    hidden = forward(params, batch, return_hidden=True)
    values = apply_head(config, params[SCORE_HEAD], hidden)
    return last_token_values(values, batch["segment_ids"])


def bradley_terry_losses(chosen: jnp.ndarray, rejected: jnp.ndarray,
                         center_coef: float = 0.0) -> jnp.ndarray:
    """Per-pair loss [B] from the two replies' scores."""
    loss = -jax.nn.log_sigmoid(chosen - rejected)
    if center_coef:
        loss = loss + center_coef * jnp.square(chosen + rejected)
    return loss


def reward_objective(config: Config, forward: Forward) -> Objective:
    def objective(params, batch: Batch):
        chosen, rejected = split_sides(sequence_scores(config.model, forward, params,
                                                       model_inputs(batch)))
        valid = real_pairs(batch)
        losses = bradley_terry_losses(chosen, rejected, config.reward.center_coef)
        sums = {
            "denominator": jnp.sum(valid),
            "accuracy": jnp.sum((chosen > rejected) * valid),
            "margin": jnp.sum((chosen - rejected) * valid),
            "rewards_chosen": jnp.sum(chosen * valid),
            "rewards_rejected": jnp.sum(rejected * valid),
        }
        return jnp.sum(losses * valid), sums

    return objective
