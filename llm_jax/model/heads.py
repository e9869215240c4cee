"""Scalar heads on the transformer's final hidden states: the reward model's score and PPO's
value. They live in the same parameter tree as the transformer, under one extra top-level key
(`score_head` or `value_head`), so they are sharded, optimized and checkpointed with it, and a
checkpoint of a reward model or a PPO policy still loads wherever a plain model does (the
transformer ignores the key)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from llm_jax.config import Config, ModelConfig
from llm_jax.model.layers import param_with_axes
from llm_jax.model.params import init_boxed_params

SCORE_HEAD, VALUE_HEAD = "score_head", "value_head"
HEAD_NAMES = (SCORE_HEAD, VALUE_HEAD)


class ScalarHead(nn.Module):
    """hidden [batch, length, d_model] -> one fp32 number per position. A critic starts at
    zero (`zero_init`): a random initial value would add noise to every advantage before the
    critic has learned anything."""

    config: ModelConfig
    zero_init: bool = False

    @nn.compact
    def __call__(self, hidden: jnp.ndarray) -> jnp.ndarray:
        cfg = self.config
        pdtype = jnp.dtype(cfg.param_dtype)
        init = nn.initializers.zeros if self.zero_init else nn.initializers.normal(cfg.init_std)
        kernel = param_with_axes(self, "kernel", init, (cfg.d_model, 1), ("embed", None), pdtype)
        bias = param_with_axes(self, "bias", nn.initializers.zeros, (1,), (None,), pdtype)
        out = jnp.einsum("btd,do->bto", hidden.astype(jnp.float32), kernel.astype(jnp.float32))
        return (out + bias.astype(jnp.float32))[..., 0]


def head_name(config: Config) -> str | None:
    """The head a run's objective trains: the reward model's score, PPO's value (GRPO has no
    critic), or none."""
    if config.train.objective == "reward":
        return SCORE_HEAD
    if config.train.objective == "ppo" and config.ppo.algorithm == "ppo":
        return VALUE_HEAD
    return None


def init_train_params(config: Config, rng: jax.Array) -> dict:
    """The boxed parameters a run trains: the transformer's, plus its objective's head."""
    params = dict(init_boxed_params(config.model, rng))  # the same draw as without a head
    name = head_name(config)
    if name is not None:
        hidden = jnp.zeros((1, 1, config.model.d_model), jnp.dtype(config.model.dtype))
        head = ScalarHead(config.model, zero_init=name == VALUE_HEAD)
        params[name] = head.init(jax.random.fold_in(rng, 1), hidden)["params"]
    return params


def abstract_train_params(config: Config) -> dict:
    """Shapes and dtypes of `init_train_params`, allocating nothing."""
    return nn.unbox(jax.eval_shape(lambda: init_train_params(config, jax.random.key(0))))


def apply_head(config: ModelConfig, head_params: dict, hidden: jnp.ndarray) -> jnp.ndarray:
    return ScalarHead(config).apply({"params": head_params}, hidden)


def last_token_index(segment_ids: jnp.ndarray) -> jnp.ndarray:
    """[B]: the position of each right-padded row's last real token (segment id > 0)."""
    return jnp.maximum(jnp.sum(segment_ids > 0, axis=1) - 1, 0)


def last_token_values(values: jnp.ndarray, segment_ids: jnp.ndarray) -> jnp.ndarray:
    """values [B, T] at each row's last real token."""
    return jnp.take_along_axis(values, last_token_index(segment_ids)[:, None], axis=1)[:, 0]
