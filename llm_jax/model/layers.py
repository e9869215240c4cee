"""Building blocks of the decoder: normalization, feed-forward variants and token embedding.

Every parameter is created with logical axis names (`embed`, `mlp`, `vocab`, ...) so that one
table of rules decides how it is sharded over the device mesh.
"""

from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from llm_jax.config import ModelConfig

Initializer = Callable[..., jnp.ndarray]


def param_with_axes(
    module: nn.Module, name: str, init: Initializer, shape: tuple[int, ...],
    axes: tuple[str | None, ...], dtype: jnp.dtype,
) -> jnp.ndarray:
    """Declares a parameter annotated with logical axis names, one per dimension."""
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


def dense(x: jnp.ndarray, kernel: jnp.ndarray, in_axes: int = 1) -> jnp.ndarray:
    """Contracts the last `in_axes` axes of `x` with the first ones of `kernel`, as one 2-D
    matmul over every token.

    An einsum such as "btd,df->btf" has a weight gradient that contracts batch and length at
    once, which XLA lowers with a transposed copy of the activations; the 2-D form's gradients
    are plain matmuls (1.5x faster for the MLP on CPU), and the reshapes are free.
    """
    lead, features = x.shape[:x.ndim - in_axes], kernel.shape[:in_axes]
    flat = x.reshape(-1, math.prod(features)) @ kernel.reshape(math.prod(features), -1)
    return flat.reshape(*lead, *kernel.shape[in_axes:])


@jax.custom_vjp
def swiglu(gate: jnp.ndarray, up: jnp.ndarray) -> jnp.ndarray:
    """silu(gate) * up. Its backward pass recomputes the sigmoid from `gate` in one fused
    pass instead of keeping autodiff's intermediates: 4% faster MLP fwd + bwd on CPU."""
    return jax.nn.silu(gate) * up


def _swiglu_forward(gate, up):
    return swiglu(gate, up), (gate, up)


def _swiglu_backward(residuals, grad):
    gate, up = residuals
    sigmoid = jax.nn.sigmoid(gate)
    grad_gate = grad * up * sigmoid * (1 + gate * (1 - sigmoid))  # d silu = s (1 + x (1 - s))
    return grad_gate, grad * gate * sigmoid


swiglu.defvjp(_swiglu_forward, _swiglu_backward)


class Norm(nn.Module):
    """RMSNorm or LayerNorm over the last axis, computed in fp32 (dtype policy)."""

    config: ModelConfig
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        cfg = self.config
        features = x.shape[-1]
        pdtype = jnp.dtype(cfg.param_dtype)
        scale = param_with_axes(self, "scale", nn.initializers.ones, (features,),
                                (self.axis_name,), pdtype)
        x32 = x.astype(jnp.float32)
        if cfg.norm == "layernorm":
            bias = param_with_axes(self, "bias", nn.initializers.zeros, (features,),
                                   (self.axis_name,), pdtype)
            centered = x32 - jnp.mean(x32, axis=-1, keepdims=True)
            normed = centered * jax.lax.rsqrt(
                jnp.mean(jnp.square(centered), axis=-1, keepdims=True) + cfg.norm_eps
            )
            out = normed * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        else:
            normed = x32 * jax.lax.rsqrt(
                jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + cfg.norm_eps
            )
            out = normed * scale.astype(jnp.float32)
        return out.astype(x.dtype)


class Mlp(nn.Module):
    """Feed-forward block: SwiGLU (Llama), GELU (GPT-2) or squared ReLU (Primer)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        init = nn.initializers.normal(cfg.init_std)
        shape_in, axes_in = (cfg.d_model, cfg.mlp_dim), ("embed", "mlp")
        up = param_with_axes(self, "up", init, shape_in, axes_in, pdtype).astype(dtype)
        down = param_with_axes(self, "down", init, (cfg.mlp_dim, cfg.d_model),
                               ("mlp", "embed"), pdtype).astype(dtype)
        hidden = dense(x, up)
        if cfg.mlp == "swiglu":
            gate = param_with_axes(self, "gate", init, shape_in, axes_in, pdtype).astype(dtype)
            hidden = swiglu(dense(x, gate), hidden)
        elif cfg.mlp == "gelu":
            hidden = jax.nn.gelu(hidden, approximate=True)
        else:
            hidden = jnp.square(jax.nn.relu(hidden))
        hidden = checkpoint_name(hidden, "mlp_hidden")
        hidden = nn.with_logical_constraint(hidden, ("act_batch", "act_length", "act_mlp"))
        return checkpoint_name(dense(hidden, down), "mlp_out")


class Embed(nn.Module):
    """Token embedding table; also the output projection when embeddings are tied."""

    config: ModelConfig

    def setup(self) -> None:
        cfg = self.config
        self.embedding = param_with_axes(
            self, "embedding", nn.initializers.normal(cfg.init_std),
            (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), jnp.dtype(cfg.param_dtype),
        )

    def __call__(self, tokens: jnp.ndarray) -> jnp.ndarray:
        return jnp.take(self.embedding, tokens, axis=0).astype(jnp.dtype(self.config.dtype))
