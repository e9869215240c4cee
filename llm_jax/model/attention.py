"""Grouped-query self-attention: projections, optional QK-norm, RoPE, then a kernel.

With a layer's cache (`kv`, `cache_meta`) the new keys and values are written at the cache's
write slot and the queries attend over every filled slot (causal by slot, masked by segment).

`model.sliding_window` makes the layer local; with `model.global_every` the stack passes each
layer its own `window` (traced: `GLOBAL_WINDOW` on the global layers), see `layer_windows`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import PartitionSpec

from llm_jax.config import ModelConfig
from llm_jax.model import attention_kernels
from llm_jax.model.kv_cache import LAYER_KV_AXES
from llm_jax.model.layers import Norm
from llm_jax.model.lora import block_matrix
from llm_jax.model.rope import apply_rope, inverse_frequencies

Q_AXES = ("act_batch", "act_length", "act_heads", "act_head_dim")
KV_AXES = ("act_batch", "act_length", "act_kv_heads", "act_head_dim")

LayerKV = tuple[jnp.ndarray, jnp.ndarray]  # one layer's cached (k, v): [batch, slots, kv_heads, head_dim]
CacheMeta = tuple[jnp.ndarray, jnp.ndarray]  # (segment ids of every slot [batch, slots], write slot)

# Kernels that serve only the training layout fall back to XLA's attention when decoding.
DECODE_KERNEL = {"splash": "xla", "blockwise": "xla", "cudnn": "dot_product"}
GLOBAL_WINDOW = 1 << 30  # the window of a global layer among local ones: wider than any row


def layer_windows(cfg: ModelConfig) -> jnp.ndarray | None:
    """Each layer's window when local and global layers alternate (layer i is global when
    (i + 1) % global_every == 0, as Gemma's `sliding_window_pattern`), else None."""
    if not cfg.global_every:
        return None
    return jnp.array([GLOBAL_WINDOW if (i + 1) % cfg.global_every == 0 else cfg.sliding_window
                      for i in range(cfg.num_layers)], jnp.int32)


class Attention(nn.Module):
    """Llama attention without biases; `num_kv_heads` < `num_heads` shares keys and values."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self, x: jnp.ndarray, positions: jnp.ndarray, segment_ids: jnp.ndarray,
        kv: LayerKV | None = None, cache_meta: CacheMeta | None = None,
        window: jnp.ndarray | None = None,
    ) -> jnp.ndarray | tuple[jnp.ndarray, LayerKV]:
        """The attention output; with a cache, also this layer's updated (k, v). `window`:
        this layer's traced window, when layers differ (see `layer_windows`)."""
        cfg = self.config
        if window is None:
            window = cfg.sliding_window or None
        heads, kv_heads, head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim
        kv_shape, kv_axes = (cfg.d_model, kv_heads, head_dim), ("embed", "kv_heads", "head_dim")
        wq = block_matrix(self, cfg, "q", (cfg.d_model, heads, head_dim),
                          ("embed", "heads", "head_dim"))
        wk = block_matrix(self, cfg, "k", kv_shape, kv_axes)
        wv = block_matrix(self, cfg, "v", kv_shape, kv_axes)
        wo = block_matrix(self, cfg, "o", (heads, head_dim, cfg.d_model),
                          ("heads", "head_dim", "embed"), in_dims=2)

        q = nn.with_logical_constraint(checkpoint_name(wq(x), "query_proj"), Q_AXES)
        k = nn.with_logical_constraint(checkpoint_name(wk(x), "key_proj"), KV_AXES)
        v = nn.with_logical_constraint(checkpoint_name(wv(x), "value_proj"), KV_AXES)
        if cfg.qk_norm:
            q = Norm(cfg, axis_name="head_dim", name="q_norm")(q)
            k = Norm(cfg, axis_name="head_dim", name="k_norm")(k)
        if cfg.position == "rope":
            inv_freq = inverse_frequencies(head_dim, cfg.rope_theta, cfg.rope_scaling)
            q = apply_rope(q, positions, inv_freq)
            k = apply_rope(k, positions, inv_freq)

        if kv is not None:
            out, kv = _attend_cached(cfg, q, k, v, segment_ids, kv, cache_meta, window)
            return wo(nn.with_logical_constraint(out, Q_AXES)), kv

        index = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])
        if self.is_mutable_collection("intermediates"):  # train.instrument
            mask = attention_kernels.attention_mask(segment_ids, segment_ids, index, index,
                                                    window)
            self.sow("intermediates", "attention_entropy", attention_kernels.attention_entropy(
                q, k, mask, segment_ids > 0, cfg.attn_softcap))
        if cfg.attention == "splash":
            out = _splash(cfg, q, k, v, segment_ids, window)
        else:
            out = attention_kernels.attend(
                cfg.attention, q, k, v, segment_ids, segment_ids, index, index, window,
                cfg.attn_softcap,
            )
        out = nn.with_logical_constraint(checkpoint_name(out, "attention_out"), Q_AXES)
        return checkpoint_name(wo(out), "out_proj")


def _attend_cached(cfg: ModelConfig, q, k, v, segment_ids, kv: LayerKV, cache_meta: CacheMeta,
                   window):
    """Writes k, v at the write slot, then attends over all slots; returns (out, new kv)."""
    slot_segments, write = cache_meta
    cache_k = jax.lax.dynamic_update_slice(kv[0], k.astype(kv[0].dtype), (0, write, 0, 0))
    cache_v = jax.lax.dynamic_update_slice(kv[1], v.astype(kv[1].dtype), (0, write, 0, 0))
    cache_k = nn.with_logical_constraint(cache_k, LAYER_KV_AXES)
    cache_v = nn.with_logical_constraint(cache_v, LAYER_KV_AXES)
    batch, length = q.shape[:2]
    q_index = jnp.broadcast_to(write + jnp.arange(length), (batch, length))
    kv_index = jnp.broadcast_to(jnp.arange(cache_k.shape[1]), (batch, cache_k.shape[1]))
    out = attention_kernels.attend(
        DECODE_KERNEL.get(cfg.attention, cfg.attention), q, cache_k.astype(q.dtype),
        cache_v.astype(q.dtype), segment_ids, slot_segments, q_index, kv_index, window,
        cfg.attn_softcap,
    )
    return out, (cache_k, cache_v)


def _splash(cfg: ModelConfig, q, k, v, segment_ids, window):
    """Splash attention; its mask is static, so a traced per-layer window picks one of two
    kernels (local or global) with `lax.cond`."""
    if window is None or isinstance(window, int):
        return _sharded_splash(cfg, q, k, v, segment_ids, window)
    return jax.lax.cond(
        window < GLOBAL_WINDOW,
        lambda: _sharded_splash(cfg, q, k, v, segment_ids, cfg.sliding_window),
        lambda: _sharded_splash(cfg, q, k, v, segment_ids, None))


def _sharded_splash(cfg: ModelConfig, q, k, v, segment_ids, window: int | None):
    """Runs the splash kernel per device shard: a Pallas call is not auto-partitioned."""
    def kernel(q_, k_, v_, s_):
        return attention_kernels.splash_attention(q_, k_, v_, s_, s_, window=window,
                                                  softcap=cfg.attn_softcap,
                                                  block=cfg.splash_block)

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return kernel(q, k, v, segment_ids)
    q_spec = nn.logical_to_mesh_axes(Q_AXES)
    kv_spec = nn.logical_to_mesh_axes(KV_AXES)
    seg_spec = PartitionSpec(q_spec[0], None)
    return jax.shard_map(kernel, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, seg_spec),
                         out_specs=q_spec, check_vma=False)(q, k, v, segment_ids)
