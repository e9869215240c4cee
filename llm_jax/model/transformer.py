"""The decoder-only transformer: embedding, a scanned stack of pre-norm blocks, output head.

`Transformer.apply({"params": params}, tokens, positions, segment_ids)` is a pure function of
the parameter pytree. Layers are stacked on a leading `layers` axis by `nn.scan`, which keeps
compile time flat in depth and lets pipeline parallelism split that axis into stages.

Decoding passes a `KVCache` (`cache=`): the call then returns `(logits, updated cache)`, the
per-layer keys and values being scanned alongside the layer parameters.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from llm_jax.config import ModelConfig
from llm_jax.errors import UserError
from llm_jax.model.attention import Attention, CacheMeta, LayerKV, layer_windows
from llm_jax.model.attention_kernels import check_backend
from llm_jax.model.kv_cache import CACHE_KV_AXES, CACHE_SEGMENT_AXES, KVCache
from llm_jax.model.layers import Embed, Norm, param_with_axes
from llm_jax.model.mlp import Mlp
from llm_jax.model.moe import LOSSES, MoeMlp
from llm_jax.model.output_head import vocab_logits
from llm_jax.model.pipeline import gpipe
from llm_jax.model.remat import remat_policy

HIDDEN_AXES = ("act_batch", "act_length", "act_embed")

class Block(nn.Module):
    """One pre-norm residual block: x + attn(norm(x)), then h + mlp(norm(h)); the MLP is a
    mixture of experts under `model.moe`."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x, positions, segment_ids, kv: LayerKV | None = None,
                 cache_meta: CacheMeta | None = None, window: jnp.ndarray | None = None):
        cfg = self.config
        attn = Attention(cfg, name="attn")(
            Norm(cfg, name="attn_norm")(x), positions, segment_ids, kv, cache_meta, window)
        if kv is not None:
            attn, kv = attn
        h = x + attn
        normed = Norm(cfg, name="mlp_norm")(h)
        if cfg.moe.experts:
            out = h + MoeMlp(cfg, name="mlp")(normed, segment_ids)
        else:
            out = h + Mlp(cfg, name="mlp")(normed)
        if self.is_mutable_collection("intermediates"):  # train.instrument
            real = (segment_ids > 0)[..., None].astype(jnp.float32)
            mean_square = jnp.sum(jnp.square(out.astype(jnp.float32)) * real) / jnp.maximum(
                jnp.sum(real) * out.shape[-1], 1.0)
            self.sow("intermediates", "activation_rms", jnp.sqrt(mean_square))
        return nn.with_logical_constraint(out, HIDDEN_AXES), kv


def block_class(config: ModelConfig) -> type[nn.Module]:
    """`Block`, wrapped in the configured rematerialization policy."""
    if config.remat == "none":
        return Block
    return nn.remat(Block, policy=remat_policy(config), prevent_cse=False)


class DecoderStack(nn.Module):
    """`num_layers` blocks scanned over a leading `layers` parameter axis; with
    `pipeline_stages > 1` the same parameters run as a GPipe pipeline over the `pipe` axis."""

    config: ModelConfig
    pipeline_stages: int = 1
    pipeline_microbatches: int = 1

    @nn.compact
    def __call__(self, x, positions, segment_ids, kv: LayerKV | None = None,
                 cache_meta: CacheMeta | None = None):
        """Hidden states; with stacked cache `kv` [layers, ...], also the updated stack."""
        if self.pipeline_stages > 1 and kv is None and not self.is_initializing():
            stage_layers = self.config.num_layers // self.pipeline_stages
            if self.config.global_every and stage_layers % self.config.global_every:
                raise UserError(
                    f"model.global_every={self.config.global_every} must divide the "
                    f"{stage_layers} layers of each of the {self.pipeline_stages} pipeline "
                    "stages, so that every stage has the same local and global layers")
            return gpipe(self._stage, self.variables["params"]["blocks"], x, positions,
                         segment_ids, self.pipeline_stages, self.pipeline_microbatches)
        stack = nn.scan(
            block_class(self.config),
            variable_axes={"params": 0, "intermediates": 0, LOSSES: 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast, nn.broadcast, 0, nn.broadcast, 0),
            length=self.config.num_layers,
            unroll=min(self.config.scan_unroll, self.config.num_layers),
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x, kv = stack(self.config, name="blocks")(x, positions, segment_ids, kv, cache_meta,
                                                  layer_windows(self.config))
        return x if kv is None else (x, kv)

    def _stage(self, stage_params, x, positions, segment_ids):
        """One pipeline stage: this stack's blocks for `num_layers / stages` layers."""
        stage_config = dataclasses.replace(
            self.config, num_layers=self.config.num_layers // self.pipeline_stages)
        return DecoderStack(stage_config).apply({"params": {"blocks": stage_params}}, x,
                                                positions, segment_ids)


class Transformer(nn.Module):
    """Llama-family decoder; the ablation switches live in `ModelConfig`. The pipeline
    fields change how the layers are scheduled over devices, never the function."""

    config: ModelConfig
    pipeline_stages: int = 1
    pipeline_microbatches: int = 1

    @nn.compact
    def __call__(
        self,
        tokens: jnp.ndarray,
        positions: jnp.ndarray | None = None,
        segment_ids: jnp.ndarray | None = None,
        return_hidden: bool = False,
        cache: KVCache | None = None,
    ) -> jnp.ndarray | tuple[jnp.ndarray, KVCache]:
        """Logits [batch, length, vocab] in fp32 (or the final hidden states).

        With `cache`, `tokens` fill slots `cache.index ...` and the result is
        `(logits, updated cache)`; `positions` are each row's own token positions (by default
        the slots, right for rows without left padding).
        """
        cfg = self.config
        check_backend(cfg.attention)
        if positions is None:
            start = 0 if cache is None else cache.index  # unpadded rows: position == slot
            positions = jnp.broadcast_to(start + jnp.arange(tokens.shape[1]), tokens.shape)
        if segment_ids is None:
            segment_ids = jnp.ones_like(tokens)
        embed = Embed(cfg, name="embed")
        x = embed(tokens)
        if cfg.position == "learned":
            table = param_with_axes(
                self, "pos_embed", nn.initializers.normal(cfg.init_std),
                (cfg.max_seq_len, cfg.d_model), (None, "embed"), jnp.dtype(cfg.param_dtype),
            )
            x = x + jnp.take(table, positions, axis=0).astype(x.dtype)
        x = nn.with_logical_constraint(x, HIDDEN_AXES)
        stack = DecoderStack(cfg, self.pipeline_stages, self.pipeline_microbatches, name="layers")
        if cache is None:
            x = stack(x, positions, segment_ids)
        else:
            x, cache = _decode_stack(stack, x, positions, segment_ids, cache)
        x = Norm(cfg, name="final_norm")(x)
        if return_hidden:
            return x if cache is None else (x, cache)
        if cfg.tie_embeddings:
            kernel = embed.embedding.T
        else:
            kernel = param_with_axes(
                self, "lm_head", nn.initializers.normal(cfg.init_std),
                (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), jnp.dtype(cfg.param_dtype),
            )
        logits = vocab_logits(x, kernel.astype(x.dtype))
        return logits if cache is None else (logits, cache)


def _decode_stack(stack: DecoderStack, x, positions, segment_ids, cache: KVCache):
    """Runs the layers against the cache: marks the new slots' segments, then writes k and v."""
    slot_segments = jax.lax.dynamic_update_slice(
        cache.segment_ids, segment_ids.astype(cache.segment_ids.dtype), (0, cache.index))
    slot_segments = nn.with_logical_constraint(slot_segments, CACHE_SEGMENT_AXES)
    kv = (nn.with_logical_constraint(cache.k, CACHE_KV_AXES),
          nn.with_logical_constraint(cache.v, CACHE_KV_AXES))
    x, (k, v) = stack(x, positions, segment_ids, kv, (slot_segments, cache.index))
    return x, KVCache(k=k, v=v, segment_ids=slot_segments, index=cache.index + x.shape[1])
