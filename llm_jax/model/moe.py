"""Mixture-of-experts feed-forward block (`model.moe`): top-k routing over SwiGLU experts.

The router's softmax probabilities pick each token's `top_k` experts, whose outputs are mixed
by those probabilities renormalized over the k (Mixtral). Two ways to run the experts:

    dropless (capacity_factor 0)  the token copies sorted by expert and multiplied by each
                                  expert's weights in one grouped matmul (megablox's GMM on
                                  TPU, `jax.lax.ragged_dot` elsewhere): no token is dropped,
                                  as in Mixtral
    capacity_factor C             each batch row gives every expert C x (its even share of
                                  the row's k x T assignments) slots, first choices first
                                  (GShard, Switch); assignments past them are dropped, and the
                                  experts run as one dense [experts, slots] matmul

Each device runs its own tokens (`_per_device`), so no global sort or dispatch is needed;
the expert weights are gathered per layer over the fsdp and expert axes, which therefore
shard their storage (and optimizer state) the way FSDP does: tokens are not exchanged
between devices by all-to-all. Capacity is then per batch row (per sequence shard under
`mesh.context`).

Router losses, summed by `router_loss` over the layers (the layer scan stacks them):
Switch Transformer's load balancing, E x sum_e f_e P_e (f_e: the share of tokens sent to
expert e over its k choices, P_e: its mean probability; aggregated over layers as
transformers' `load_balancing_loss_func`), and ST-MoE's z-loss, the mean squared logsumexp
of the router logits. Padding (segment 0) counts in neither.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from llm_jax.config import ModelConfig, MoeConfig
from llm_jax.model.attention_kernels import target_platform
from llm_jax.model.layers import dense, param_with_axes
from llm_jax.model.mlp import Mlp, swiglu

EXPERT_AXES = {"gate": ("expert", "embed", "mlp"), "up": ("expert", "embed", "mlp"),
               "down": ("expert", "mlp", "embed")}
LOSSES = "losses"  # the flax collection the router's statistics are sown into
TILE = 128  # megablox's row, contraction and column tile


def grouped_matmul(x: jnp.ndarray, w: jnp.ndarray, sizes: jnp.ndarray,
                   megablox: bool | None = None, interpret: bool = False) -> jnp.ndarray:
    """Rows of x [M, K], in groups of `sizes`, each times its group's w [G, K, N] -> [M, N].
    On TPU (`megablox=None`: when the step is traced for one, and every dimension is a
    multiple of 128) this is megablox's GMM kernel, whose weight gradient is its grouped
    `tgmm`: XLA's own ragged dot computes that gradient as a dense product over all groups."""
    if megablox is None:
        megablox = target_platform() == "tpu" and all(n % TILE == 0 for n in (*x.shape,
                                                                               w.shape[-1]))
    if not megablox:
        return jax.lax.ragged_dot(x, w, sizes)
    from jax.experimental.pallas.ops.tpu.megablox import ops

    return ops.gmm(x, w, sizes, x.dtype, (TILE, TILE, TILE), None, None, False, interpret)


def _dropless(x: jnp.ndarray, experts: jnp.ndarray, weights: jnp.ndarray, kernels: dict,
              num_experts: int) -> jnp.ndarray:
    """x [N, d], experts and weights [N, k] -> [N, d] via grouped matmuls."""
    n, k = experts.shape
    flat = experts.reshape(-1)
    order = jnp.argsort(flat, stable=True)  # the token copies, grouped by expert
    sizes = jnp.bincount(flat, length=num_experts).astype(jnp.int32)
    copies = x[order // k]
    hidden = swiglu(grouped_matmul(copies, kernels["gate"], sizes),
                    grouped_matmul(copies, kernels["up"], sizes))
    out = grouped_matmul(hidden, kernels["down"], sizes)
    out = out[jnp.argsort(order)].reshape(n, k, -1)  # back in (token, choice) order
    return jnp.einsum("nkd,nk->nd", out, weights.astype(out.dtype))


def _with_capacity(x: jnp.ndarray, experts: jnp.ndarray, weights: jnp.ndarray, kernels: dict,
                   num_experts: int, capacity_factor: float) -> jnp.ndarray:
    """x [B, T, d], experts and weights [B, T, k] -> [B, T, d], each row's assignments past an
    expert's capacity dropped."""
    batch, length, k = experts.shape
    capacity = max(1, math.ceil(capacity_factor * length * k / num_experts))
    chosen = jax.nn.one_hot(experts, num_experts, dtype=jnp.int32)  # [B, T, k, E]
    by_priority = chosen.transpose(0, 2, 1, 3).reshape(batch, k * length, num_experts)
    slots = jnp.cumsum(by_priority, axis=1) - 1  # each assignment's slot in its expert
    slot = jnp.sum(slots * by_priority, axis=-1).reshape(batch, k, length).transpose(0, 2, 1)
    kept = slot < capacity
    slot = jnp.where(kept, slot, 0)
    rows = jnp.arange(batch)[:, None, None]
    buffer = jnp.zeros((batch, num_experts, capacity, x.shape[-1]), x.dtype).at[
        rows, experts, slot].add(x[:, :, None, :] * kept[..., None].astype(x.dtype))
    hidden = swiglu(jnp.einsum("becd,edf->becf", buffer, kernels["gate"]),
                    jnp.einsum("becd,edf->becf", buffer, kernels["up"]))
    out = jnp.einsum("becf,efd->becd", hidden, kernels["down"])[rows, experts, slot]
    mix = (weights * kept).astype(out.dtype)
    return jnp.einsum("btkd,btk->btd", out, mix)


def _divisible(shape: tuple[int, ...], spec, mesh) -> bool:
    for size, axes in zip(shape, spec):
        axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
        if size % math.prod(mesh.shape[axis] for axis in axes):
            return False
    return True


def _per_device(run, x, experts, weights, kernels: dict) -> jnp.ndarray:
    """`run(x, experts, weights, kernels)` on each device's own tokens (`shard_map`): the
    routing, sort and grouped matmuls stay local, where GSPMD would sort the global batch.
    Each layer's expert weights are gathered whole but for their `mlp` axis (as FSDP gathers
    a dense block), whose partial sums are added over the tensor axis."""
    mesh = jax.sharding.get_abstract_mesh()
    tokens = nn.logical_to_mesh_axes(("act_batch", "act_length", None))
    if mesh.empty or not _divisible(x.shape, tokens, mesh):  # e.g. one row being decoded
        return run(x, experts, weights, kernels)
    specs = {name: nn.logical_to_mesh_axes(axes) for name, axes in EXPERT_AXES.items()}
    mlp_dim = {"gate": 2, "up": 2, "down": 1}
    tensor_axes = specs["down"][1]

    def local(x, experts, weights, *shards):
        whole = {}
        for (name, spec), kernel in zip(specs.items(), shards):
            for dim, axes in enumerate(spec):
                if axes is not None and dim != mlp_dim[name]:
                    kernel = jax.lax.all_gather(kernel, axes, axis=dim, tiled=True)
            whole[name] = kernel
        out = run(x, experts, weights, whole)
        return out if tensor_axes is None else jax.lax.psum(out, tensor_axes)

    return jax.shard_map(local, mesh=mesh, in_specs=(tokens, tokens, tokens, *specs.values()),
                         out_specs=tokens, check_vma=False)(
        x, experts, weights, *(kernels[name] for name in specs))


class MoeMlp(nn.Module):
    """The feed-forward block of `model.moe.experts` SwiGLU experts (and shared experts)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jnp.ndarray, segment_ids: jnp.ndarray) -> jnp.ndarray:
        cfg, moe = self.config, self.config.moe
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        init = nn.initializers.normal(cfg.init_std)
        num_experts, d, f = moe.experts, cfg.d_model, cfg.mlp_dim
        router = param_with_axes(self, "router", init, (d, num_experts), ("embed", None), pdtype)
        shapes = {"gate": (num_experts, d, f), "up": (num_experts, d, f),
                  "down": (num_experts, f, d)}
        kernels = {name: param_with_axes(self, name, init, shape, EXPERT_AXES[name],
                                         pdtype).astype(dtype) for name, shape in shapes.items()}
        logits = dense(x.astype(jnp.float32), router.astype(jnp.float32))  # [B, T, E]
        probs = jax.nn.softmax(logits, axis=-1)
        top_probs, experts = jax.lax.top_k(probs, moe.top_k)
        weights = top_probs / jnp.sum(top_probs, axis=-1, keepdims=True)
        if moe.capacity_factor:
            run = functools.partial(_with_capacity, num_experts=num_experts,
                                    capacity_factor=moe.capacity_factor)
        else:
            def run(x, experts, weights, kernels):
                flat = _dropless(x.reshape(-1, d), experts.reshape(-1, moe.top_k),
                                 weights.reshape(-1, moe.top_k), kernels, num_experts)
                return flat.reshape(x.shape)
        out = _per_device(run, x, experts, weights, kernels)
        if moe.shared_experts:
            shared = dataclasses.replace(cfg, mlp_dim=moe.shared_experts * cfg.mlp_dim,
                                         moe=MoeConfig())
            out = out + Mlp(shared, name="shared")(x)
        if self.is_mutable_collection(LOSSES):
            self._sow_router_statistics(logits, probs, experts, segment_ids)
        return out

    def _sow_router_statistics(self, logits, probs, experts, segment_ids) -> None:
        real = (segment_ids > 0).astype(jnp.float32)[..., None]  # [B, T, 1]
        chosen = jax.nn.one_hot(experts, self.config.moe.experts).sum(axis=-2)  # [B, T, E]
        self.sow(LOSSES, "router", {
            "assigned": jnp.sum(chosen * real, axis=(0, 1)),
            "probability": jnp.sum(probs * real, axis=(0, 1)),
            "tokens": jnp.sum(real),
            "z": jnp.sum(jnp.square(jax.nn.logsumexp(logits, axis=-1)) * real[..., 0]),
        })


def router_loss(moe: MoeConfig, losses: dict) -> jnp.ndarray:
    """aux_loss x load balancing + z_loss x z-loss, from the stacked [layers, ...] statistics
    every `MoeMlp` sowed (see the module docstring)."""
    (stats,) = jax.tree.leaves(losses, is_leaf=lambda x: isinstance(x, dict) and "z" in x)
    tokens = jnp.maximum(jnp.sum(stats["tokens"]), 1.0)
    share = jnp.sum(stats["assigned"], axis=0) / tokens
    probability = jnp.sum(stats["probability"], axis=0) / tokens
    balance = moe.experts * jnp.sum(share * probability)
    z = jnp.sum(stats["z"] / jnp.maximum(stats["tokens"], 1.0))
    return moe.aux_loss * balance + moe.z_loss * z
