"""The two sides of a preference batch as one batch of 2B rows, so one forward pass (of the
policy, of the reference, of a reward model) scores chosen and rejected replies together."""

from __future__ import annotations

import jax.numpy as jnp

from llm_jax.data.post_pipeline import PAIR_SIDES
from llm_jax.train.objectives import Batch


def both_sides(batch: Batch, field: str) -> jnp.ndarray:
    """`chosen_<field>` and `rejected_<field>` stacked along the batch axis: [2B, ...]."""
    return jnp.concatenate([batch[f"{side}_{field}"] for side in PAIR_SIDES], axis=0)


def model_inputs(batch: Batch) -> Batch:
    """The forward contract (`inputs`, `positions`, `segment_ids`) of both sides' sequences."""
    return {"inputs": both_sides(batch, "tokens"), "positions": both_sides(batch, "positions"),
            "segment_ids": both_sides(batch, "segment_ids")}


def split_sides(values: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """[2B, ...] -> (chosen [B, ...], rejected [B, ...])."""
    half = values.shape[0] // 2
    return values[:half], values[half:]


def real_pairs(batch: Batch) -> jnp.ndarray:
    """1.0 for pairs with a reply, 0.0 for the all-padding rows that fill an eval batch."""
    return (jnp.sum(batch["chosen_mask"], axis=1) > 0).astype(jnp.float32)
