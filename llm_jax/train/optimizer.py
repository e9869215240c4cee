"""AdamW with global-norm clipping, a learning-rate schedule and a weight-decay mask (optax)."""

from __future__ import annotations

import jax
import optax

from llm_jax.config import OptimizerConfig


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


def weight_decay_mask(cfg: OptimizerConfig, params) -> object:
    """True where weight decay applies: matmul weights, and norms/embeddings if configured."""

    def decays(path, _) -> bool:
        names = [str(getattr(key, "key", key)) for key in path]
        if any("norm" in name for name in names):
            return cfg.decay_norms
        if names[0] in ("embed", "pos_embed"):
            return cfg.decay_embeddings
        return True

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    schedule = learning_rate_schedule(cfg, total_steps)
    parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm else []
    parts.append(optax.adamw(
        learning_rate=schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
        weight_decay=cfg.weight_decay, mask=lambda p: weight_decay_mask(cfg, p),
    ))
    return optax.chain(*parts)
