"""The optimizer: optax's AdamW, Lion, Adafactor or Muon, after global-norm clipping, with a
learning-rate schedule and a weight-decay mask.

Every optimizer reads `optimizer.lr` through the schedule and `weight_decay` through the mask
(matmul weights; norms and embeddings only if configured):

    adamw      optax.adamw: b1, b2, eps, mu_dtype
    lion       optax.lion (Chen et al. 2023): b1, b2 (the paper: 0.9, 0.99), mu_dtype; the
               paper's learning rate is 3-10x smaller and its weight decay 3-10x larger
    adafactor  optax.adafactor (Shazeer & Stern 2018): factored second moments for matrices
               with both last dimensions >= 128, no first moment, update clipping at 1
    muon       optax.contrib.muon (Jordan 2024): Newton-Schulz orthogonalized momentum (b1)
               for the attention and MLP matrices, each layer's matrix on its own; AdamW
               (b1, b2, eps, no weight decay) for embeddings, the output head and norms.
               Updates are scaled to AdamW's RMS (`consistent_rms=0.2`, Liu et al. 2025,
               "Muon is Scalable for LLM Training"), so AdamW's lr and weight decay carry over.

The moments carry their parameters' logical axes, so they are sharded like the parameters;
`optimizer.zero1` renames their `embed` axis to `opt_embed` (rules: fsdp and data), which
shards the optimizer state over the data-parallel axis too while parameters stay replicated
there (ZeRO stage 1: XLA reduce-scatters the gradients and all-gathers the updates).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from llm_jax.config import OptimizerConfig

MUON_RMS = 0.2  # updates at AdamW's typical RMS (Liu et al. 2025)


def learning_rate_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup, then cosine decay to `lr * min_lr_ratio`, a constant, or WSD."""
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    end_lr = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=cfg.lr, warmup_steps=warmup,
            decay_steps=max(total_steps, warmup + 1), end_value=end_lr,
        )
    ramp = optax.linear_schedule(0.0, cfg.lr, max(warmup, 1))
    if cfg.schedule == "constant":
        return optax.join_schedules([ramp, optax.constant_schedule(cfg.lr)], [warmup])
    # Warmup-stable-decay (Hu et al. 2024, MiniCPM): flat at the peak, then a linear cool-down.
    decay_steps = max(int(total_steps * cfg.decay_fraction), 1)
    stable_end = max(total_steps - decay_steps, warmup)
    return optax.join_schedules(
        [ramp, optax.constant_schedule(cfg.lr), optax.linear_schedule(cfg.lr, end_lr, decay_steps)],
        [warmup, stable_end],
    )


def _names(path) -> list[str]:
    return [str(getattr(key, "key", key)) for key in path]


def weight_decay_mask(cfg: OptimizerConfig, params) -> object:
    """True where weight decay applies: matmul weights, and norms/embeddings if configured."""

    def decays(path, _) -> bool:
        names = _names(path)
        if any("norm" in name for name in names):
            return cfg.decay_norms
        if names[0] in ("embed", "pos_embed"):
            return cfg.decay_embeddings
        return True

    return jax.tree_util.tree_map_with_path(decays, params)


def muon_dimensions(params) -> Any:
    """For each parameter, how Muon sees it as matrices (`MuonDimensionNumbers`: the input and
    output axes, leading axes such as `layers` batched), or None for AdamW. Negative axes, so a
    stacked `[layers, ...]` or pipelined `[stages, layers, ...]` kernel reads the same."""
    dims = optax.contrib.MuonDimensionNumbers
    by_name = {("attn", "q"): dims(-3, (-2, -1)), ("attn", "k"): dims(-3, (-2, -1)),
               ("attn", "v"): dims(-3, (-2, -1)), ("attn", "o"): dims((-3, -2), -1),
               ("mlp", "up"): dims(-2, -1), ("mlp", "gate"): dims(-2, -1),
               ("mlp", "down"): dims(-2, -1)}

    def dimensions(path, _):
        return by_name.get(tuple(_names(path)[-2:]))

    return jax.tree_util.tree_map_with_path(
        dimensions, params, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def _base_optimizer(cfg: OptimizerConfig, schedule: optax.Schedule) -> optax.GradientTransformation:
    mask = lambda p: weight_decay_mask(cfg, p)  # noqa: E731
    mu_dtype = jnp.dtype(cfg.mu_dtype)
    if cfg.name == "lion":
        return optax.lion(schedule, b1=cfg.b1, b2=cfg.b2, mu_dtype=mu_dtype,
                          weight_decay=cfg.weight_decay, mask=mask)
    if cfg.name == "adafactor":
        return optax.adafactor(schedule, weight_decay_rate=cfg.weight_decay or None,
                               weight_decay_mask=mask)
    if cfg.name == "muon":
        return optax.contrib.muon(
            schedule, beta=cfg.b1, eps=cfg.eps, weight_decay=cfg.weight_decay,
            weight_decay_mask=mask, mu_dtype=mu_dtype, adam_b1=cfg.b1, adam_b2=cfg.b2,
            muon_weight_dimension_numbers=muon_dimensions, consistent_rms=MUON_RMS)
    return optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, mu_dtype=mu_dtype,
                       weight_decay=cfg.weight_decay, mask=mask)


def _logical_state(opt_state: Any, params: Any, zero1: bool) -> Any:
    """The moments' logical axes, dropped where they no longer fit (replicated): a factored
    moment is a row or a column of its parameter, an unfactored one a placeholder of one
    element, and a parameter that another part of a partitioned optimizer owns holds no array.
    `zero1` renames `embed` to `opt_embed`."""
    is_box = lambda x: isinstance(x, nn.Partitioned)  # noqa: E731
    shapes = {(box.names, jnp.shape(box.value)) for box in jax.tree.leaves(params, is_leaf=is_box)
              if is_box(box)}

    def fix(leaf):
        if not is_box(leaf):
            return leaf
        if not hasattr(leaf.value, "shape") or (leaf.names, leaf.value.shape) not in shapes:
            return leaf.value
        if zero1:
            return leaf.replace(names=tuple("opt_embed" if n == "embed" else n for n in leaf.names))
        return leaf

    return jax.tree.map(fix, opt_state, is_leaf=is_box)


def make_optimizer(cfg: OptimizerConfig, total_steps: int,
                   schedule: optax.Schedule | None = None) -> optax.GradientTransformation:
    """`schedule` replaces the one `cfg` describes (an ensemble picks each member's own)."""
    schedule = schedule or learning_rate_schedule(cfg, total_steps)
    parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm else []
    parts.append(_base_optimizer(cfg, schedule))
    tx = optax.chain(*parts)
    return optax.GradientTransformation(lambda params: _logical_state(tx.init(params), params, cfg.zero1),
                                        tx.update)
