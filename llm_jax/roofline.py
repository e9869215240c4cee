"""A roofline for one compiled train step: the fastest it could run on a chip.

Three lower bounds on the step time, from the compiled program's own counts per device
(`hlo_costs`): its matmul FLOPs at the chip's peak, its HBM traffic at the chip's memory
bandwidth, and the bytes its collectives send at the chip's interconnect bandwidth. The step
cannot be faster than the largest of them (everything overlapped) and should not be slower
than their sum (nothing overlapped) unless something else bounds it: elementwise work, kernel
launch gaps, a collective whose ring does not use every link. It is an estimate, not a
measurement. MFU is the model's FLOPs (`train.flops`: 6N + 12·L·d·T per token) over that
time at the chip's peak, so recomputation under remat lowers it as it does on a real chip.
"""

from __future__ import annotations

import dataclasses
import math

from llm_jax.chips import Chip
from llm_jax.hlo_costs import CustomCall, StepCosts

# Matmuls in each Pallas splash-attention kernel, per (query, key) pair: the forward computes
# scores and the weighted values; the dq kernel recomputes scores, then dP and dQ; the dkv
# kernel recomputes scores, then dP, dV and dK.
SPLASH_MATMULS = {"splash_mha_fwd": 2, "splash_mha_dq": 3, "splash_mha_dkv": 4}
FLOATS = ("bf16", "f16", "f32")


def _attention_kernel_flops(call: CustomCall, mask_fraction: float) -> float | None:
    """FLOPs of one splash kernel call from its first two floating-point operands, the
    queries [..., H, T, hd] and keys [..., KV, S, hd] (a batch of one may have no batch
    axis); None for a kernel this does not know."""
    matmuls = next((n for prefix, n in SPLASH_MATMULS.items() if call.name.startswith(prefix)),
                   None)
    arrays = [a.dims for a in call.operands if a.dtype in FLOATS and len(a.dims) >= 3]
    if matmuls is None or len(arrays) < 2:
        return None
    query, key = arrays[0], arrays[1]
    *batch, heads, length, head_dim = query
    return (matmuls * 2.0 * math.prod(batch) * heads * length * key[-2] * head_dim
            * mask_fraction)


def _grouped_matmul_flops(call: CustomCall) -> float | None:
    """FLOPs of a megablox kernel (mixture of experts) from its floating-point operands:
    `gmm` rows [m, k] times experts [G, k, n] (or [G, n, k]), and `tgmm`, the weight
    gradient, rows [m, k] and [m, n] into [G, k, n]; each row meets one expert, 2 m k n."""
    if "gmm" not in call.name:
        return None
    arrays = [a.dims for a in call.operands if a.dtype in FLOATS]
    if len(arrays) != 2 or len(arrays[0]) != 2:
        return None
    (rows, inner), other = arrays
    if "tgmm" in call.name and len(other) == 2:
        return 2.0 * rows * inner * other[1]
    if len(other) == 3:
        return 2.0 * rows * other[1] * other[2]
    return None


@dataclasses.dataclass(frozen=True)
class Roofline:
    compute_s: float
    memory_s: float
    collective_s: float
    model_flops: float  # per chip per step
    peak_flops: float
    unknown_kernels: tuple[str, ...]

    @property
    def step_s(self) -> float:
        return max(self.compute_s, self.memory_s, self.collective_s)

    @property
    def no_overlap_s(self) -> float:
        return self.compute_s + self.memory_s + self.collective_s

    @property
    def mfu(self) -> float:
        return self.model_flops / (self.step_s * self.peak_flops)

    @property
    def bound(self) -> str:
        times = {"compute": self.compute_s, "HBM": self.memory_s,
                 "collectives": self.collective_s}
        return max(times, key=times.get)


def roofline(costs: StepCosts, chip: Chip, model_flops: float,
             mask_fraction: float) -> Roofline:
    """`model_flops` per chip per step; `mask_fraction` of (query, key) pairs an attention
    kernel computes (about 1/2 for causal masks)."""
    kernel_flops, unknown = 0.0, []
    for call in costs.custom_calls:
        flops = _attention_kernel_flops(call, mask_fraction)
        if flops is None:
            flops = _grouped_matmul_flops(call)
        if flops is None:
            unknown.append(call.name)
        else:
            kernel_flops += call.count * flops
    return Roofline((costs.matmul_flops + kernel_flops) / chip.peak_flops,
                    costs.hbm_bytes / chip.hbm_bandwidth,
                    costs.total_collective_bytes / chip.ici_bandwidth,
                    model_flops, chip.peak_flops, tuple(sorted(set(unknown))))


def _seconds(value: float) -> str:
    return f"{value:.2f} s" if value >= 1 else f"{value * 1e3:.1f} ms"


def roofline_lines(line: Roofline, tokens_per_chip: float) -> list[str]:
    lines = [f"roofline (an estimate from the compiled step, not a measurement): compute "
             f"{_seconds(line.compute_s)}, HBM {_seconds(line.memory_s)}, collectives "
             f"{_seconds(line.collective_s)} per step; bound by {line.bound}",
             f"  step >= {_seconds(line.step_s)} (all overlapped; {_seconds(line.no_overlap_s)}"
             f" with none), {tokens_per_chip / line.step_s:,.0f} tokens/s/chip, MFU <= "
             f"{line.mfu:.1%}"]
    if line.unknown_kernels:
        lines.append(f"  FLOPs of these kernels are not counted: {', '.join(line.unknown_kernels)}")
    return lines
