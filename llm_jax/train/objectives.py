"""Training objectives. Each maps (params, batch) to (loss numerator, sums) where
`sums["denominator"]` is what the numerator is averaged over (tokens, pairs, ...): the train
step adds both over microbatches and devices before dividing, so a sharded or accumulated step
computes exactly the full-batch mean."""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp

from llm_jax.config import Config
from llm_jax.model.output_head import output_kernel
from llm_jax.train.fused_cross_entropy import fused_cross_entropy_sums
from llm_jax.train.losses import cross_entropy_sums

Batch = dict[str, jnp.ndarray]
Forward = Callable[[Any, Batch], jnp.ndarray]
Objective = Callable[[Any, Batch], tuple[jnp.ndarray, dict[str, jnp.ndarray]]]


def lm_objective(config: Config, forward: Forward) -> Objective:
    """Causal language modeling: next-token cross-entropy (+ optional z-loss) on `loss_mask`;
    with `train.loss_chunk`, fused with the output projection chunk by chunk. A mixture of
    experts adds its router losses (`model.moe.aux_loss`, `z_loss`), logged as `router_loss`."""
    train = config.train

    def objective(params, batch: Batch):
        mask = batch["loss_mask"].astype(jnp.float32)
        out, router = forward(params, batch, return_hidden=bool(train.loss_chunk),
                              with_router_loss=True)
        if train.loss_chunk:
            kernel = output_kernel(config.model, params, out.dtype)
            nll, z = fused_cross_entropy_sums(out, kernel, batch["targets"], mask,
                                              train.z_loss, train.loss_chunk)
        else:
            nll, z = cross_entropy_sums(out, batch["targets"], mask, train.z_loss)
        sums = {"denominator": jnp.sum(mask), "nll": nll}
        if config.model.moe.experts:  # a mean over the batch: weighted as the tokens are
            sums["router_loss"] = router * sums["denominator"]
        return nll + z + sums.get("router_loss", 0.0), sums

    return objective


# SFT is the same next-token loss: its batches' loss_mask is 1 only on the assistant's tokens.
OBJECTIVES: dict[str, Callable[[Config, Forward], Objective]] = {"lm": lm_objective,
                                                                 "sft": lm_objective}


def _register_post_training() -> None:
    """The preference and RL objectives, imported on first use: they build on this module."""
    from llm_jax.train.dpo import dpo_objective
    from llm_jax.train.ppo import ppo_objective
    from llm_jax.train.reward_model import reward_objective

    for name, factory in (("dpo", dpo_objective), ("reward", reward_objective),
                          ("ppo", ppo_objective)):
        OBJECTIVES.setdefault(name, factory)


def make_objective(config: Config, forward: Forward) -> Objective:
    _register_post_training()
    name = config.train.objective
    if name not in OBJECTIVES:
        from llm_jax.errors import UserError

        raise UserError(f"train.objective={name} is not available yet; available: "
                        f"{', '.join(OBJECTIVES)}")
    return OBJECTIVES[name](config, forward)
