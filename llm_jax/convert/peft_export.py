"""`llm-jax export-hf --peft`: a LoRA run's adapters as a PEFT adapter directory
(`adapter_config.json`, `adapter_model.safetensors`), which `peft.PeftModel.from_pretrained`
loads onto the Hugging Face export of the base model.

PEFT's `lora_A` is [rank, in] and `lora_B` [out, rank] (`nn.Linear` layout) with
scaling `lora_alpha / r`, so A [*inputs, rank] and B [rank, *outputs] are flattened to
matrices and transposed. Under `model.lora.quantize` the adapters were trained against the
quantized base; PEFT applies them to the full-precision one, as QLoRA's adapters are used.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from llm_jax.config import ModelConfig
from llm_jax.infer.host_arrays import is_main_process, layer_to_host
from llm_jax.model.lora import MATRICES

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
HF_MODULES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
              "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
              "down": "mlp.down_proj"}


def adapter_config(cfg: ModelConfig, targets: list[str]) -> dict:
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": cfg.lora.rank,
            "lora_alpha": cfg.lora.alpha, "lora_dropout": 0.0, "bias": "none",
            "fan_in_fan_out": False, "use_rslora": False, "inference_mode": True,
            "base_model_name_or_path": None,
            "target_modules": sorted(HF_MODULES[name].split(".")[-1] for name in targets)}


def adapter_tensors(cfg: ModelConfig, params: dict) -> dict[str, np.ndarray]:
    """PEFT's tensor names -> [rank, in] / [out, rank] arrays, one layer at a time."""
    blocks = params["layers"]["blocks"]
    tensors = {}
    for name, (module, in_dims, _) in MATRICES.items():
        if f"{name}_lora_a" not in blocks[module]:
            continue
        for layer in range(cfg.num_layers):
            a = layer_to_host(blocks[module][f"{name}_lora_a"], layer)
            b = layer_to_host(blocks[module][f"{name}_lora_b"], layer)
            prefix = f"base_model.model.model.layers.{layer}.{HF_MODULES[name]}"
            tensors[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(
                a.reshape(-1, cfg.lora.rank).T.astype(np.float32))
            tensors[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(
                b.reshape(cfg.lora.rank, -1).T.astype(np.float32))
    return tensors


def write_peft_adapter(cfg: ModelConfig, params: dict, out: Path) -> Path:
    """Gathered by every process (collective), written by process 0."""
    tensors = adapter_tensors(cfg, params)
    targets = [name for name in MATRICES
               if f"{name}_lora_a" in params["layers"]["blocks"][MATRICES[name][0]]]
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        (out / ADAPTER_CONFIG).write_text(json.dumps(adapter_config(cfg, targets), indent=2))
        save_file(tensors, out / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    return out
