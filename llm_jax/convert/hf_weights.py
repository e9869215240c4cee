"""Tensor-by-tensor mapping between Hugging Face Llama weights and our parameter pytree.

Hugging Face stores `nn.Linear` weights as [out, in]; we store einsum kernels as
[in, ...out] (q: [d_model, heads, head_dim]) with a leading `layers` axis from `nn.scan`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from llm_jax.config import ModelConfig
from llm_jax.errors import UserError
from llm_jax.infer.host_arrays import layer_to_host, to_host

TensorGetter = Callable[[str], np.ndarray]


def _layer_tensor_names(layer: int) -> dict[str, str]:
    prefix = f"model.layers.{layer}."
    return {
        "q": prefix + "self_attn.q_proj.weight",
        "k": prefix + "self_attn.k_proj.weight",
        "v": prefix + "self_attn.v_proj.weight",
        "o": prefix + "self_attn.o_proj.weight",
        "gate": prefix + "mlp.gate_proj.weight",
        "up": prefix + "mlp.up_proj.weight",
        "down": prefix + "mlp.down_proj.weight",
        "attn_norm": prefix + "input_layernorm.weight",
        "mlp_norm": prefix + "post_attention_layernorm.weight",
    }


def expected_hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a Hugging Face checkpoint of this config holds, with its shape."""
    d, heads, kv, hd, f = (cfg.d_model, cfg.num_heads, cfg.num_kv_heads,
                           cfg.resolved_head_dim, cfg.mlp_dim)
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, d), "model.norm.weight": (d,)}
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, d)
    per_layer = {"q": (heads * hd, d), "k": (kv * hd, d), "v": (kv * hd, d), "o": (d, heads * hd),
                 "gate": (f, d), "up": (f, d), "down": (d, f), "attn_norm": (d,), "mlp_norm": (d,)}
    for layer in range(cfg.num_layers):
        for key, name in _layer_tensor_names(layer).items():
            shapes[name] = per_layer[key]
    return shapes


def params_from_hf(get: TensorGetter, cfg: ModelConfig, dtype=np.float32) -> dict:
    """Builds our parameter pytree, checking each tensor's presence and shape first."""
    shapes = expected_hf_shapes(cfg)

    def tensor(name: str) -> np.ndarray:
        array = get(name)
        if tuple(array.shape) != shapes[name]:
            raise UserError(f"tensor {name} has shape {tuple(array.shape)}, "
                            f"expected {shapes[name]} from config.json")
        return np.asarray(array, dtype=dtype)

    d, heads, kv, hd = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim
    to_ours = {
        "q": lambda w: w.T.reshape(d, heads, hd),
        "k": lambda w: w.T.reshape(d, kv, hd),
        "v": lambda w: w.T.reshape(d, kv, hd),
        "o": lambda w: w.T.reshape(heads, hd, d),
        "gate": lambda w: w.T, "up": lambda w: w.T, "down": lambda w: w.T,
        "attn_norm": lambda w: w, "mlp_norm": lambda w: w,
    }
    stacked: dict[str, list[np.ndarray]] = {key: [] for key in to_ours}
    for layer in range(cfg.num_layers):
        for key, name in _layer_tensor_names(layer).items():
            stacked[key].append(to_ours[key](tensor(name)))
    layers = {key: np.stack(values) for key, values in stacked.items()}
    params = {
        "embed": {"embedding": tensor("model.embed_tokens.weight")},
        "layers": {"blocks": {
            "attn": {key: layers[key] for key in ("q", "k", "v", "o")},
            "mlp": {key: layers[key] for key in ("gate", "up", "down")},
            "attn_norm": {"scale": layers["attn_norm"]},
            "mlp_norm": {"scale": layers["mlp_norm"]},
        }},
        "final_norm": {"scale": tensor("model.norm.weight")},
    }
    if not cfg.tie_embeddings:
        params["lm_head"] = tensor("lm_head.weight").T
    return params


def hf_tensors(params: dict, cfg: ModelConfig) -> dict[str, Callable[[], np.ndarray]]:
    """For each Hugging Face tensor (name -> [out, in] array) of our parameter pytree, a
    function that fetches it to host memory alone: a layer's slice is cut where the
    parameters live (sharded, perhaps over several processes) and only that slice is gathered."""
    d = cfg.d_model
    blocks = params["layers"]["blocks"]
    per_layer = {
        "q": (blocks["attn"]["q"], lambda w: w.reshape(d, -1).T),
        "k": (blocks["attn"]["k"], lambda w: w.reshape(d, -1).T),
        "v": (blocks["attn"]["v"], lambda w: w.reshape(d, -1).T),
        "o": (blocks["attn"]["o"], lambda w: w.reshape(-1, d).T),
        "gate": (blocks["mlp"]["gate"], lambda w: w.T),
        "up": (blocks["mlp"]["up"], lambda w: w.T),
        "down": (blocks["mlp"]["down"], lambda w: w.T),
        "attn_norm": (blocks["attn_norm"]["scale"], lambda w: w),
        "mlp_norm": (blocks["mlp_norm"]["scale"], lambda w: w),
    }

    def fetch(value, layer: int | None = None, transform=lambda w: w):
        return lambda: np.ascontiguousarray(
            transform(to_host(value) if layer is None else layer_to_host(value, layer)))

    tensors = {
        "model.embed_tokens.weight": fetch(params["embed"]["embedding"]),
        "model.norm.weight": fetch(params["final_norm"]["scale"]),
    }
    if not cfg.tie_embeddings:
        tensors["lm_head.weight"] = fetch(params["lm_head"], transform=lambda w: w.T)
    for layer in range(cfg.num_layers):
        for key, name in _layer_tensor_names(layer).items():
            tensors[name] = fetch(per_layer[key][0], layer, per_layer[key][1])
    return tensors
