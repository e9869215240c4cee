"""Mapping between a Hugging Face `LlamaConfig` or `MixtralConfig` (config.json) and our
`ModelConfig`: a Mixtral is our Llama with `model.moe` (and its sliding window, if any).

Both the transformers 4 layout (`rope_theta`, `rope_scaling`) and the transformers 5 layout
(`rope_parameters`) are read. Any feature of the checkpoint that our model does not compute
is refused by name, so an import never silently computes a different function.
"""

from __future__ import annotations

from typing import Any

from llm_jax.config import ConfigError, ModelConfig, MoeConfig, RopeScalingConfig
from llm_jax.errors import UserError

SUPPORTED_ROPE_TYPES = ("default", "llama3")


def _rope_settings(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    params = hf.get("rope_parameters")
    if isinstance(params, dict):
        theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
        return float(theta), params
    return float(hf.get("rope_theta", 10000.0)), hf.get("rope_scaling")


def _refuse(key: str, value: Any, why: str) -> UserError:
    return UserError(f"config.json: {key}={value!r} is not supported ({why})")


def _moe_from_hf(hf: dict[str, Any]) -> MoeConfig:
    if hf.get("router_jitter_noise"):
        raise _refuse("router_jitter_noise", hf["router_jitter_noise"], "the router has no noise")
    return MoeConfig(experts=int(hf["num_local_experts"]), top_k=int(hf["num_experts_per_tok"]),
                     aux_loss=float(hf.get("router_aux_loss_coef", 0.02)), z_loss=0.0)


def model_config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """Our `ModelConfig` for a Hugging Face Llama config.json, or a UserError naming the key."""
    model_type = hf.get("model_type", "llama")
    if model_type not in ("llama", "mixtral"):
        raise _refuse("model_type", model_type, "only Llama and Mixtral checkpoints can be "
                      "imported")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise _refuse(key, hf[key], "our Llama has no biases")
    if hf.get("hidden_act", "silu") != "silu":
        raise _refuse("hidden_act", hf["hidden_act"], "Llama's MLP is SwiGLU with silu")
    if hf.get("pretraining_tp", 1) != 1:
        raise _refuse("pretraining_tp", hf["pretraining_tp"], "only 1 is supported")
    theta, rope = _rope_settings(hf)
    scaling = RopeScalingConfig()
    if rope:
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise _refuse("rope_scaling.rope_type", rope_type,
                          f"supported types: {', '.join(SUPPORTED_ROPE_TYPES)}")
        if rope_type == "llama3":
            scaling = RopeScalingConfig(
                factor=float(rope["factor"]),
                low_freq_factor=float(rope["low_freq_factor"]),
                high_freq_factor=float(rope["high_freq_factor"]),
                original_max_position_embeddings=int(rope["original_max_position_embeddings"]),
            )
    required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size")
    missing = [key for key in required if key not in hf]
    if missing:
        raise UserError(f"config.json lacks {', '.join(missing)}")
    heads = hf["num_attention_heads"]
    try:
        return ModelConfig(
            vocab_size=hf["vocab_size"],
            d_model=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            mlp_dim=hf["intermediate_size"],
            max_seq_len=hf.get("max_position_embeddings", 2048),
            rope_theta=theta,
            rope_scaling=scaling,
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            sliding_window=int(hf.get("sliding_window") or 0) if model_type == "mixtral" else 0,
            moe=_moe_from_hf(hf) if model_type == "mixtral" else MoeConfig(),
        )
    except ConfigError as err:
        raise UserError(f"config.json describes a model we cannot build: {err}") from None


def hf_config_from_model(cfg: ModelConfig) -> dict[str, Any]:
    """A config.json that transformers' `LlamaForCausalLM` (or `MixtralForCausalLM`, for a
    mixture of experts) loads as our exact function; a capacity factor's dropping is a
    training setting, and the export computes every expert dropless, as Mixtral does."""
    moe = cfg.moe.experts > 0
    unsupported = {
        "model.norm": (cfg.norm, "rmsnorm"),
        "model.mlp": (cfg.mlp, "swiglu"),
        "model.position": (cfg.position, "rope"),
        "model.qk_norm": (cfg.qk_norm, False),
        "model.global_every": (cfg.global_every, 0),
        "model.attn_softcap": (cfg.attn_softcap, 0.0),
        "model.moe.shared_experts": (cfg.moe.shared_experts, 0),
    }
    if not moe:  # Mixtral has a sliding window, Llama none
        unsupported["model.sliding_window"] = (cfg.sliding_window, 0)
    for key, (value, llama_value) in unsupported.items():
        if value != llama_value:
            raise UserError(
                f"{key}={value} has no Llama equivalent in transformers; only {key}="
                f"{llama_value} models can be exported"
            )
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling.factor:
        rope = {
            "rope_type": "llama3",
            "rope_theta": cfg.rope_theta,
            "factor": cfg.rope_scaling.factor,
            "low_freq_factor": cfg.rope_scaling.low_freq_factor,
            "high_freq_factor": cfg.rope_scaling.high_freq_factor,
            "original_max_position_embeddings": cfg.rope_scaling.original_max_position_embeddings,
        }
    common = {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.resolved_head_dim,
        "intermediate_size": cfg.mlp_dim,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": rope,
        "tie_word_embeddings": cfg.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",
    }
    if not moe:
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **common}
    return {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", **common,
            "num_local_experts": cfg.moe.experts, "num_experts_per_tok": cfg.moe.top_k,
            "router_aux_loss_coef": cfg.moe.aux_loss, "router_jitter_noise": 0.0,
            "sliding_window": cfg.sliding_window or None}
