"""Model FLOPs per token and the peak FLOP/s they are compared with (MFU).

FLOPs per token = 6 * N_matmul + 12 * L * d_model * T (PaLM, appendix B; attention counted
as non-causal), where N_matmul counts every parameter used in a matmul: the output
projection included, the input embedding lookup and norms not, and of a mixture of experts
only the experts each token is routed to. Under LoRA the frozen
matrices take no weight gradient: 4 * N_matmul (forward and input gradient) + 6 * N_adapters.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp

from llm_jax.config import LoraConfig, ModelConfig
from llm_jax.model import abstract_params
from llm_jax.model.lora import is_adapter, unquantized

# Dense bf16 peak per chip, from the vendors' datasheets.
PEAK_FLOPS = {"v5 lite": 197e12, "v5e": 197e12, "v5p": 459e12, "v5": 459e12, "v6": 918e12,
              "h100": 989e12, "h200": 989e12}


def matmul_params(config: ModelConfig) -> int:
    """The base model's matmul weights a token goes through (adapters aside): of a mixture of
    experts, its router and `top_k` of the experts."""
    params = abstract_params(dataclasses.replace(config, lora=LoraConfig()))
    moe = config.moe

    def used(path, x) -> float:
        names = [str(getattr(key, "key", key)) for key in path]
        if x.ndim < 3:
            return 0
        if moe.experts and names[-2] == "mlp" and names[-1] in ("gate", "up", "down"):
            return x.size * moe.top_k / moe.experts
        return x.size

    count = sum(jax.tree.leaves(jax.tree_util.tree_map_with_path(used, params["layers"])))
    return int(count) + config.vocab_size * config.d_model  # lm_head, or the tied embedding


def adapter_params(config: ModelConfig) -> int:
    params = abstract_params(unquantized(config))
    adapters = jax.tree_util.tree_map_with_path(
        lambda path, x: x.size if is_adapter(str(path[-1].key)) else 0, params)
    return sum(jax.tree.leaves(adapters))


def flops_per_token(config: ModelConfig, seq_len: int) -> float:
    attention = 12 * config.num_layers * config.d_model * seq_len
    if config.lora.rank:
        return 4 * matmul_params(config) + 6 * adapter_params(config) + attention
    return 6 * matmul_params(config) + attention


def measured_matmul_flops(size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a large fp32 matmul on the default device: the peak used on CPU."""
    a = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        out = matmul(a)
    out.block_until_ready()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def peak_flops_per_device() -> tuple[float, str]:
    """(peak FLOP/s of one device, where the number comes from)."""
    kind = jax.devices()[0].device_kind.lower()
    for name, peak in PEAK_FLOPS.items():
        if name in kind:
            return peak, f"{kind} datasheet bf16"
    return measured_matmul_flops(), f"measured fp32 matmul on {kind}"
