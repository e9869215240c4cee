"""Instruments for ablations (`train.instrument`): what the model does inside, layer by layer.

- `activation_rms/layer{i}`: RMS of block i's output over real tokens (residual-stream
  growth, what norm placement and init scale change);
- `attn_entropy/layer{i}`: mean entropy in nats of block i's attention distributions (their
  collapse onto single keys is the instability qk-norm and soft-capping address);
- `update_ratio` and `update_ratio/layer{i}`: the step's ||update|| / ||parameters||, over
  all parameters and over block i's (the effective learning rate, per layer).

The first two are sown by the model (flax's `sow` into "intermediates") in an extra forward
pass over the step's first microbatch, outside the gradient, so the step's loss and update are
those of an uninstrumented run; the ratio is read off the optimizer's update.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from llm_jax.config import Config
from llm_jax.model import Transformer

Instruments = Callable[[Any, dict[str, jax.Array]], dict[str, jax.Array]]

# The batch fields of one model input, per objective: (tokens, positions, segment ids).
INPUT_FIELDS = {"lm": ("inputs", "positions", "segment_ids"),
                "sft": ("inputs", "positions", "segment_ids"),
                "ppo": ("tokens", "positions", "segment_ids"),
                "dpo": ("chosen_tokens", "chosen_positions", "chosen_segment_ids"),
                "reward": ("chosen_tokens", "chosen_positions", "chosen_segment_ids")}


def per_layer(name: str, values: jax.Array) -> dict[str, jax.Array]:
    return {f"{name}/layer{i}": values[i] for i in range(values.shape[0])}


def make_instruments(config: Config) -> Instruments:
    """(params, batch) -> the sown per-layer metrics for the first microbatch of `batch`."""
    model = Transformer(config.model)
    fields = INPUT_FIELDS[config.train.objective]
    rows = config.train.batch_size // config.train.microbatches

    def instruments(params, batch):
        tokens, positions, segments = (batch[name][:rows] for name in fields)
        _, state = model.apply({"params": params}, tokens, positions, segments,
                               return_hidden=True, mutable=["intermediates"])
        sown = jax.lax.stop_gradient(state["intermediates"]["layers"]["blocks"])
        return {**per_layer("activation_rms", sown["activation_rms"][0]),
                **per_layer("attn_entropy", sown["attn"]["attention_entropy"][0])}

    return instruments


def update_ratios(updates: Any, params: Any) -> dict[str, jax.Array]:
    """||update|| / ||params||, overall and per layer of the stacked blocks."""
    def layer_norms(tree):
        squares = [jnp.sum(jnp.square(leaf.astype(jnp.float32)), axis=tuple(range(1, leaf.ndim)))
                   for leaf in jax.tree.leaves(tree)]
        return jnp.sqrt(sum(squares))

    ratio = optax.tree.norm(updates) / optax.tree.norm(params)
    layers = layer_norms(updates["layers"]) / layer_norms(params["layers"])
    return {"update_ratio": ratio, **per_layer("update_ratio", layers)}
