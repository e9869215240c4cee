"""The decoder-only transformer: embedding, a scanned stack of pre-norm blocks, output head.

`Transformer.apply({"params": params}, tokens, positions, segment_ids)` is a pure function of
the parameter pytree. Layers are stacked on a leading `layers` axis by `nn.scan`, which keeps
compile time flat in depth and lets pipeline parallelism split that axis into stages.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from llm_jax.config import ModelConfig
from llm_jax.model.attention import Attention
from llm_jax.model.attention_kernels import check_backend
from llm_jax.model.layers import Embed, Mlp, Norm, param_with_axes

HIDDEN_AXES = ("act_batch", "act_length", "act_embed")

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Block(nn.Module):
    """One pre-norm residual block: x + attn(norm(x)), then h + mlp(norm(h))."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x, positions, segment_ids):
        cfg = self.config
        h = x + Attention(cfg, name="attn")(Norm(cfg, name="attn_norm")(x), positions, segment_ids)
        out = h + Mlp(cfg, name="mlp")(Norm(cfg, name="mlp_norm")(h))
        return nn.with_logical_constraint(out, HIDDEN_AXES), None


def block_class(config: ModelConfig) -> type[nn.Module]:
    """`Block`, wrapped in the configured rematerialization policy."""
    if config.remat == "none":
        return Block
    return nn.remat(Block, policy=REMAT_POLICIES[config.remat], prevent_cse=False)


class DecoderStack(nn.Module):
    """`num_layers` blocks scanned over a leading `layers` parameter axis."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x, positions, segment_ids):
        stack = nn.scan(
            block_class(self.config),
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast, nn.broadcast),
            length=self.config.num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x, _ = stack(self.config, name="blocks")(x, positions, segment_ids)
        return x


class Transformer(nn.Module):
    """Llama-family decoder; the ablation switches live in `ModelConfig`."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        tokens: jnp.ndarray,
        positions: jnp.ndarray | None = None,
        segment_ids: jnp.ndarray | None = None,
        return_hidden: bool = False,
    ) -> jnp.ndarray:
        """Logits [batch, length, vocab] in fp32 (or the final hidden states)."""
        cfg = self.config
        check_backend(cfg.attention)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
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
        x = DecoderStack(cfg, name="layers")(x, positions, segment_ids)
        x = Norm(cfg, name="final_norm")(x)
        if return_hidden:
            return x
        if cfg.tie_embeddings:
            logits = embed.attend(x)
        else:
            head = param_with_axes(
                self, "lm_head", nn.initializers.normal(cfg.init_std),
                (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), jnp.dtype(cfg.param_dtype),
            )
            logits = jnp.einsum("btd,dv->btv", x, head.astype(x.dtype))
        logits = nn.with_logical_constraint(logits, ("act_batch", "act_length", "act_vocab"))
        return logits.astype(jnp.float32)
