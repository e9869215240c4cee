"""Tensor-by-tensor mapping between Hugging Face Llama (and Mixtral) weights and our parameter
pytree; Mixtral's experts are our stacked `[layers, experts, ...]` kernels, its router
(`block_sparse_moe.gate`) our `mlp/router`.

Hugging Face stores `nn.Linear` weights as [out, in]; we store einsum kernels as
[in, ...out] (q: [d_model, heads, head_dim]) with a leading `layers` axis from `nn.scan`.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from llm_jax.checkpoint import HostArraySource
from llm_jax.config import ModelConfig
from llm_jax.errors import UserError
from llm_jax.infer.host_arrays import layer_to_host, to_host

# (Hugging Face tensor name, rows of its first axis) -> those rows as a float32 array
TensorGetter = Callable[[str, slice], np.ndarray]
BLOCK_BYTES = 64 << 20  # vocab-sized tensors are read in blocks of rows of about this size


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


# Mixtral's experts: (our stacked kernel, its per-expert tensor w1 / w2 / w3)
EXPERT_TENSORS = {"gate": "w1", "down": "w2", "up": "w3"}


def _expert_tensor_name(layer: int, key: str, expert: int) -> str:
    return f"model.layers.{layer}.block_sparse_moe.experts.{expert}.{EXPERT_TENSORS[key]}.weight"


def _router_tensor_name(layer: int) -> str:
    return f"model.layers.{layer}.block_sparse_moe.gate.weight"


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
            if not (cfg.moe.experts and key in EXPERT_TENSORS):
                shapes[name] = per_layer[key]
        if cfg.moe.experts:
            shapes[_router_tensor_name(layer)] = (cfg.moe.experts, d)
            for key in EXPERT_TENSORS:
                for expert in range(cfg.moe.experts):
                    shapes[_expert_tensor_name(layer, key, expert)] = per_layer[key]
    return shapes


def check_shape(name: str, shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    if shape != expected:
        raise UserError(f"tensor {name} has shape {shape}, expected {expected} from config.json")


def param_sources(get: TensorGetter, cfg: ModelConfig, dtype=np.float32) -> dict:
    """Our parameter pytree with a `HostArraySource` at each leaf: a stacked [layers, ...]
    parameter is filled layer by layer into its own buffer only when built, so that a save
    can hold one parameter (and one Hugging Face tensor) at a time."""
    shapes = expected_hf_shapes(cfg)

    def tensor(name: str, rows: slice = slice(None)) -> np.ndarray:
        array = get(name, rows)
        full = shapes[name]
        check_shape(name, tuple(array.shape), (len(range(full[0])[rows]), *full[1:]))
        return np.asarray(array, dtype=dtype)

    d, heads, kv, hd, f = (cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim,
                           cfg.mlp_dim)
    ours = {  # key: (our per-layer shape, from Hugging Face's [out, in])
        "q": ((d, heads, hd), lambda w: w.T.reshape(d, heads, hd)),
        "k": ((d, kv, hd), lambda w: w.T.reshape(d, kv, hd)),
        "v": ((d, kv, hd), lambda w: w.T.reshape(d, kv, hd)),
        "o": ((heads, hd, d), lambda w: w.T.reshape(heads, hd, d)),
        "gate": ((d, f), lambda w: w.T), "up": ((d, f), lambda w: w.T),
        "down": ((f, d), lambda w: w.T),
        "attn_norm": ((d,), lambda w: w), "mlp_norm": ((d,), lambda w: w),
    }

    def stacked(key: str) -> HostArraySource:
        shape, to_ours = ours[key]

        def build() -> np.ndarray:
            out = np.empty((cfg.num_layers, *shape), dtype)
            for layer in range(cfg.num_layers):
                out[layer] = to_ours(tensor(_layer_tensor_names(layer)[key]))
            return out

        return HostArraySource((cfg.num_layers, *shape), np.dtype(dtype), build)

    def stacked_experts(key: str) -> HostArraySource:
        """[layers, experts, ...]: each expert's w1 / w2 / w3, as the dense MLP's kernel."""
        shape, to_ours = ours[key]
        experts = cfg.moe.experts

        def build() -> np.ndarray:
            out = np.empty((cfg.num_layers, experts, *shape), dtype)
            for layer in range(cfg.num_layers):
                for expert in range(experts):
                    out[layer, expert] = to_ours(tensor(_expert_tensor_name(layer, key, expert)))
            return out

        return HostArraySource((cfg.num_layers, experts, *shape), np.dtype(dtype), build)

    def stacked_router() -> HostArraySource:
        def build() -> np.ndarray:
            out = np.empty((cfg.num_layers, d, cfg.moe.experts), dtype)
            for layer in range(cfg.num_layers):
                out[layer] = tensor(_router_tensor_name(layer)).T
            return out

        return HostArraySource((cfg.num_layers, d, cfg.moe.experts), np.dtype(dtype), build)

    def vocab_sized(name: str, transpose: bool) -> HostArraySource:
        """Read in blocks of rows into its buffer, so never a second whole copy."""
        vocab = cfg.vocab_size
        shape = (d, vocab) if transpose else (vocab, d)
        block = max(1, BLOCK_BYTES // (d * np.dtype(dtype).itemsize))

        def build() -> np.ndarray:
            out = np.empty(shape, dtype)
            for start in range(0, vocab, block):
                rows = slice(start, min(start + block, vocab))
                if transpose:
                    out[:, rows] = tensor(name, rows).T
                else:
                    out[rows] = tensor(name, rows)
            return out

        return HostArraySource(shape, np.dtype(dtype), build)

    sources = {
        "embed": {"embedding": vocab_sized("model.embed_tokens.weight", transpose=False)},
        "layers": {"blocks": {
            "attn": {key: stacked(key) for key in ("q", "k", "v", "o")},
            "mlp": ({"router": stacked_router(),
                     **{key: stacked_experts(key) for key in ("gate", "up", "down")}}
                    if cfg.moe.experts else {key: stacked(key) for key in ("gate", "up", "down")}),
            "attn_norm": {"scale": stacked("attn_norm")},
            "mlp_norm": {"scale": stacked("mlp_norm")},
        }},
        "final_norm": {"scale": HostArraySource((d,), np.dtype(dtype),
                                                lambda: tensor("model.norm.weight"))},
    }
    if not cfg.tie_embeddings:
        sources["lm_head"] = vocab_sized("lm_head.weight", transpose=True)
    return sources


def params_from_hf(get: TensorGetter, cfg: ModelConfig, dtype=np.float32) -> dict:
    """Our whole parameter pytree in host memory, each tensor's shape checked."""
    return jax.tree.map(lambda source: source.build(), param_sources(get, cfg, dtype))


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
    moe = cfg.moe.experts
    for layer in range(cfg.num_layers):
        for key, name in _layer_tensor_names(layer).items():
            if not (moe and key in EXPERT_TENSORS):
                tensors[name] = fetch(per_layer[key][0], layer, per_layer[key][1])
        if moe:
            tensors[_router_tensor_name(layer)] = fetch(blocks["mlp"]["router"], layer,
                                                        lambda w: w.T)
            for key in EXPERT_TENSORS:
                for expert in range(moe):
                    tensors[_expert_tensor_name(layer, key, expert)] = fetch(
                        blocks["mlp"][key], layer, lambda w, e=expert: w[e].T)
    return tensors
