"""The output projection from final hidden states to vocabulary logits, in one place.

The transformer's own head, the policy logits that RL reads beside a value head, and the
fused chunked cross-entropy (`llm_jax.train.fused_cross_entropy`) all take the same kernel
(the embedding table when embeddings are tied) and the same logical axes.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from llm_jax.config import ModelConfig
from llm_jax.model.layers import dense

LOGIT_AXES = ("act_batch", "act_length", "act_vocab")


def output_kernel(config: ModelConfig, params: dict, dtype: jnp.dtype) -> jnp.ndarray:
    """The output projection [d_model, vocab] of a parameter tree, in `dtype`."""
    if config.tie_embeddings:
        return params["embed"]["embedding"].astype(dtype).T
    return params["lm_head"].astype(dtype)


def vocab_logits(hidden: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """hidden [batch, length, d_model] @ kernel [d_model, vocab] -> fp32 logits, vocab-sharded."""
    logits = nn.with_logical_constraint(dense(hidden, kernel), LOGIT_AXES)
    return logits.astype(jnp.float32)


def lm_logits(config: ModelConfig, params: dict, hidden: jnp.ndarray) -> jnp.ndarray:
    """`Transformer`'s logits from its final hidden states, so that one forward pass gives
    both the logits and what a scalar head reads."""
    return vocab_logits(hidden, output_kernel(config, params, hidden.dtype))
