"""The block's matmuls with low-rank adapters (LoRA, Hu et al. 2021) and quantized bases.

A targeted matrix W [*inputs, *outputs] gains `{name}_lora_a` [*inputs, rank] and
`{name}_lora_b` [rank, *outputs], and computes x W + (alpha / rank) (x A) B. B starts at zero,
so an adapted model starts as its base; A is drawn as PEFT draws it (Kaiming-uniform, bound
1 / sqrt(K)), which makes the adapters `export-hf --peft` writes load in PEFT unchanged.
`model.lora.quantize` stores every W in bfloat16 or as `quantize.py` codes (adapted or not:
the whole base is frozen).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from llm_jax.config import ModelConfig
from llm_jax.model.layers import Initializer, dense, param_with_axes
from llm_jax.model.quantize import as_matrix, dequantize, quantize, quantized_axes

ADAPTER_SUFFIXES = ("_lora_a", "_lora_b")
# Every matrix of a block: its module, and how many of its leading dimensions are inputs and
# how many trailing ones outputs (q: [d_model] -> [heads, head_dim]).
MATRICES = {"q": ("attn", 1, 2), "k": ("attn", 1, 2), "v": ("attn", 1, 2), "o": ("attn", 2, 1),
            "gate": ("mlp", 1, 1), "up": ("mlp", 1, 1), "down": ("mlp", 1, 1)}


def along_outputs(name: str) -> bool:
    """Whether nf4 blocks run along this matrix's outputs: its input is `embed`, which FSDP
    shards (see `quantize.py`)."""
    return name not in ("o", "down")


def unquantized(cfg: ModelConfig) -> ModelConfig:
    """The same model with its base stored as plain parameters: what shapes and FLOPs are
    counted on (a packed nf4 matrix still has all its weights)."""
    return dataclasses.replace(cfg, lora=dataclasses.replace(cfg.lora, quantize="none"))


def lora_scale(cfg: ModelConfig) -> float:
    return cfg.lora.alpha / cfg.lora.rank


def _base_kernel(module: nn.Module, cfg: ModelConfig, name: str, init: Initializer,
                 shape: tuple[int, ...], axes: tuple[str, ...], in_dims: int) -> jnp.ndarray:
    """W in the compute dtype: a parameter, or its int8 / nf4 codes dequantized."""
    dtype = jnp.dtype(cfg.dtype)
    method = cfg.lora.quantize
    if method in ("none", "bfloat16"):
        stored = jnp.dtype(cfg.param_dtype if method == "none" else method)
        return param_with_axes(module, name, init, shape, axes, stored).astype(dtype)
    out_dims = len(shape) - in_dims
    names = quantized_axes(method, axes, in_dims)

    def quantized_init(key: jax.Array) -> dict:
        codes = quantize(init(key, shape, jnp.float32), method, in_dims, out_dims,
                         along_outputs(name))
        return {part: nn.LogicallyPartitioned(value, names[part]) for part, value in codes.items()}

    return dequantize(module.param(name, quantized_init), shape, dtype, along_outputs(name))


def _adapter_a_init(key: jax.Array, shape: tuple[int, ...], dtype) -> jnp.ndarray:
    bound = 1.0 / math.sqrt(math.prod(shape[:-1]))
    return jax.random.uniform(key, shape, dtype, -bound, bound)


@dataclasses.dataclass(frozen=True)
class Matrix:
    """One block matrix as the forward pass uses it: W (dequantized), and its adapter."""

    kernel: jnp.ndarray
    in_dims: int
    adapter: tuple[jnp.ndarray, jnp.ndarray, float] | None = None  # (A, B, alpha / rank)

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        out = dense(x, self.kernel, self.in_dims)
        if self.adapter is None:
            return out
        a, b, scale = self.adapter
        return out + (scale * dense(dense(x, a, self.in_dims), b)).astype(out.dtype)


def block_matrix(module: nn.Module, cfg: ModelConfig, name: str, shape: tuple[int, ...],
                 axes: tuple[str, ...], in_dims: int = 1) -> Matrix:
    """Declares the block matrix `name` of `shape` (logical `axes`) and its adapter."""
    init = nn.initializers.normal(cfg.init_std)
    kernel = _base_kernel(module, cfg, name, init, shape, axes, in_dims)
    if not cfg.lora.rank or name not in cfg.lora.target_names:
        return Matrix(kernel, in_dims)
    dtype, pdtype, rank = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype), cfg.lora.rank
    a = param_with_axes(module, f"{name}_lora_a", _adapter_a_init, (*shape[:in_dims], rank),
                        (*axes[:in_dims], None), pdtype)
    b = param_with_axes(module, f"{name}_lora_b", nn.initializers.zeros,
                        (rank, *shape[in_dims:]), (None, *axes[in_dims:]), pdtype)
    return Matrix(kernel, in_dims, (a.astype(dtype), b.astype(dtype), lora_scale(cfg)))


def is_adapter(name: str) -> bool:
    return name.endswith(ADAPTER_SUFFIXES)


def merged_kernel(cfg: ModelConfig, module_params: dict, name: str) -> jnp.ndarray:
    """W + (alpha / rank) A B of one (stacked) matrix, dequantized, in fp32."""
    _, in_dims, out_dims = MATRICES[name]
    base = module_params[name]
    if isinstance(base, dict):  # codes [*lead, K (or K / 2), N]
        lead = base["codes"].shape[:-2]
        base = dequantize(base, (*lead, *_kernel_shape(cfg, name)), jnp.float32,
                          along_outputs(name))
    base = base.astype(jnp.float32)
    if f"{name}_lora_a" not in module_params:
        return base
    a = as_matrix(module_params[f"{name}_lora_a"].astype(jnp.float32), in_dims, 1)
    b = as_matrix(module_params[f"{name}_lora_b"].astype(jnp.float32), 1, out_dims)
    return base + lora_scale(cfg) * (a @ b).reshape(base.shape)


def _kernel_shape(cfg: ModelConfig, name: str) -> tuple[int, ...]:
    d, heads, kv, hd, f = (cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim,
                           cfg.mlp_dim)
    return {"q": (d, heads, hd), "k": (d, kv, hd), "v": (d, kv, hd), "o": (heads, hd, d),
            "gate": (d, f), "up": (d, f), "down": (f, d)}[name]


def merge_adapters(cfg: ModelConfig, params: dict) -> dict:
    """The plain parameter tree a model without adapters computes the same function with:
    every adapter folded into its matrix, every quantized matrix dequantized (to
    `model.param_dtype`). Other parameters are returned as they are."""
    blocks = params["layers"]["blocks"]
    pdtype = jnp.dtype(cfg.param_dtype)
    merged_blocks = dict(blocks)
    for module in ("attn", "mlp"):
        merged = {key: value for key, value in blocks[module].items() if not is_adapter(key)}
        for name in merged:
            if name in MATRICES:
                merged[name] = merged_kernel(cfg, blocks[module], name).astype(pdtype)
        merged_blocks[module] = merged
    return {**params, "layers": {**params["layers"], "blocks": merged_blocks}}


def without_adapters(params: Any) -> Any:
    """The base model's function from an adapted tree: every B is zero, so each adapter adds
    nothing. The reference of DPO and PPO under LoRA, with no second copy of the weights."""
    def zeroed(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        return jnp.zeros_like(leaf) if name.endswith("_lora_b") else leaf

    return jax.tree_util.tree_map_with_path(zeroed, params)
