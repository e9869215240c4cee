"""Causal, segment-masked attention kernels, chosen by `model.attention`.

All kernels take queries [batch, q_len, heads, head_dim] and keys/values
[batch, kv_len, kv_heads, head_dim] (grouped-query: kv_heads divides heads) and return
[batch, q_len, heads, head_dim]. A query attends to a key when the key is not later in the
row (`kv_index <= q_index`) and both carry the same segment id, so packed documents never
see each other; with a sliding `window`, also only when it is fewer than `window` positions
back (Mistral's and Gemma's local attention, as `transformers` masks it). `softcap` bounds
the scaled scores to (-cap, cap) by `cap * tanh(score / cap)` (Gemma 2) before the mask.
The softmax runs in fp32 in every kernel.

- `xla`: plain einsums, readable and portable; the reference for the others.
- `blockwise`: causal query blocks with a hand-written backward pass, the fastest on CPU
  (training layout only; decoding falls back to `xla`).
- `dot_product`: `jax.nn.dot_product_attention`, which lets XLA pick the backend's best path.
- `cudnn`: the same function forced onto cuDNN's fused flash attention (NVIDIA GPUs only).
- `splash`: the Pallas splash-attention kernel (TPU only; `interpret=True` runs it anywhere).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from llm_jax.errors import UserError
from llm_jax.model.blockwise_attention import blockwise_attention

NEEDED_BACKEND = {"cudnn": "gpu", "splash": "tpu"}


def target_platform() -> str:
    """The platform the model is traced for: the current mesh's (compile-only TPU devices
    included, `llm-jax plan`), else this process's backend."""
    device = jax.sharding.get_abstract_mesh().abstract_device
    return jax.default_backend() if device is None else device.platform


def check_backend(impl: str) -> None:
    """Fails early, with a message, when a kernel is asked for on hardware that lacks it."""
    needed = NEEDED_BACKEND.get(impl)
    platform = target_platform() if needed else ""
    if needed and platform != needed:
        raise UserError(
            f"model.attention={impl} needs a {needed.upper()} but this process runs on "
            f"'{platform}'; use model.attention=xla or model.attention=dot_product"
        )


def attention_mask(
    q_segment_ids: jnp.ndarray, kv_segment_ids: jnp.ndarray,
    q_index: jnp.ndarray, kv_index: jnp.ndarray, window: int | jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Boolean [batch, q_len, kv_len]: causal by row index, within one segment, and within
    `window` positions when given (an int, or a traced one that differs by layer)."""
    causal = kv_index[:, None, :] <= q_index[:, :, None]
    same_segment = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    if window is None:
        return causal & same_segment
    near = q_index[:, :, None] - kv_index[:, None, :] < window
    return causal & same_segment & near


def soft_cap(scores: jnp.ndarray, softcap: float) -> jnp.ndarray:
    return softcap * jnp.tanh(scores / softcap) if softcap else scores


def attention_entropy(q, k, mask, real_queries, softcap: float = 0.0) -> jnp.ndarray:
    """Mean entropy (nats) of the attention distributions of real queries, over heads: low
    when heads collapse onto single keys (Zhai et al. 2023), the instability that qk-norm
    and soft-capping address. Recomputes the scores in fp32 whatever the kernel."""
    batch, q_len, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    grouped = q.reshape(batch, q_len, kv_heads, heads // kv_heads, head_dim)
    logits = jnp.einsum("btkgd,bskd->bkgts", grouped, k, preferred_element_type=jnp.float32)
    logits = soft_cap(logits * (head_dim**-0.5), softcap)
    logits = jnp.where(mask[:, None, None], logits, -jnp.inf)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    entropy = -jnp.sum(jnp.where(mask[:, None, None], jnp.exp(log_probs) * log_probs, 0.0), -1)
    weight = real_queries[:, None, None, :].astype(jnp.float32)
    return jnp.sum(entropy * weight) / jnp.maximum(jnp.sum(weight) * heads, 1.0)


def xla_attention(q, k, v, mask, softcap: float = 0.0):
    batch, q_len, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(batch, q_len, kv_heads, heads // kv_heads, head_dim)
    logits = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
    logits = soft_cap(logits * (head_dim**-0.5), softcap)
    logits = jnp.where(mask[:, None, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(batch, q_len, heads, head_dim)


def dot_product_attention(q, k, v, mask, implementation: str | None = None):
    return jax.nn.dot_product_attention(
        q, k, v, mask=mask[:, None], implementation=implementation
    )


def splash_attention(q, k, v, q_segment_ids, kv_segment_ids, *, window: int | None = None,
                     softcap: float = 0.0, block: int = 512, interpret: bool = False):
    """Pallas splash attention over one device's shard; training layout only (q_len == kv_len).

    Under a device mesh, call it inside `shard_map` with batch and heads split (see
    `llm_jax.model.attention.Attention`), since a Pallas call is not auto-partitioned. The
    kernel's mask is static: `window` is an int here (a local or a global layer). `block`:
    the query and key block of the forward and both backward kernels (`model.splash_block`),
    one block when the sequence is shorter.
    """
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    _, seq_len, heads, head_dim = q.shape
    if k.shape[1] != seq_len:
        raise UserError("splash attention serves training (q_len == kv_len); decode with xla")
    block = min(block, seq_len)
    shape = (seq_len, seq_len)
    mask = (masks.CausalMask(shape) if window is None
            else masks.LocalMask(shape, window_size=(window - 1, 0), offset=0))
    kernel = splash.make_splash_mha(
        mask=masks.MultiHeadMask([mask] * heads), attn_logits_soft_cap=softcap or None,
        block_sizes=splash.BlockSizes(
            block_q=block, block_kv_compute=block, block_kv=block,
            block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
            block_q_dq=block, block_kv_dq=block,
        ),
        head_shards=1, q_seq_shards=1, interpret=interpret,
    )
    scaled_q = (q * head_dim**-0.5).astype(q.dtype)

    def one_example(q1, k1, v1, q_seg, kv_seg):
        segments = splash.SegmentIds(q=q_seg, kv=kv_seg)
        # The kernel wants [heads, length, head_dim].
        out = kernel(q1.swapaxes(0, 1), k1.swapaxes(0, 1), v1.swapaxes(0, 1),
                     segment_ids=segments)
        return out.swapaxes(0, 1)

    return jax.vmap(one_example)(scaled_q, k, v, q_segment_ids, kv_segment_ids)


def attend(
    impl: str, q, k, v, q_segment_ids, kv_segment_ids, q_index, kv_index,
    window: int | jnp.ndarray | None = None, softcap: float = 0.0,
) -> jnp.ndarray:
    """Dispatches to the configured kernel."""
    if impl == "splash":
        return splash_attention(q, k, v, q_segment_ids, kv_segment_ids, window=window,
                                softcap=softcap)
    mask = attention_mask(q_segment_ids, kv_segment_ids, q_index, kv_index, window)
    if impl == "xla":
        return xla_attention(q, k, v, mask, softcap)
    if impl == "blockwise":
        return blockwise_attention(q, k, v, mask, softcap)
    implementation = "cudnn" if impl == "cudnn" else None
    return dot_product_attention(q, k, v, mask, implementation)

