"""Rematerialization: what the backward pass of a block keeps and what it recomputes.

The block's key activations carry `checkpoint_name`s (`config.REMAT_NAMES`): the q, k and v
projections, the attention output before and after its output projection, the MLP's hidden
activation and its output. `model.remat` picks a policy: JAX's generic ones (`full` keeps
only each block's input, `dots` every matmul output, ...), or a named one that keeps exactly
the listed activations and recomputes the rest (MaxText's per-tensor `remat_policy` is the
model). `llm-jax plan` counts the kept activations in its formula, and its compiled figures
show the real trade.
"""

from __future__ import annotations

from typing import Any, Callable

import jax

from llm_jax.config import ModelConfig

GENERIC = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

def remat_policy(cfg: ModelConfig) -> Callable[..., Any]:
    """The `jax.checkpoint` policy of `model.remat` (not "none")."""
    if cfg.remat in GENERIC:
        return GENERIC[cfg.remat]
    return jax.checkpoint_policies.save_only_these_names(*cfg.remat_names())
