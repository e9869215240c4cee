"""Accelerators' datasheet figures, which `plan` and its roofline measure a step against.

From the vendors' published specifications (Cloud TPU's system architecture pages, NVIDIA's
H100 SXM datasheet): dense bf16 peak, HBM capacity and bandwidth, and the chip's
bidirectional inter-chip interconnect bandwidth (ICI; NVLink for the H100).
"""

from __future__ import annotations

import dataclasses
import re

from llm_jax.config import ConfigError


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    hbm_bytes: float
    peak_flops: float  # dense bf16, per second
    hbm_bandwidth: float  # bytes per second
    ici_bandwidth: float  # bytes per second, all links of one chip, both directions
    cores_per_chip: int  # a TPU slice's name counts TensorCores
    platform: str  # jax.default_backend() on such a chip


CHIPS = {
    "v4": Chip("TPU v4", 32 * 2**30, 275e12, 1228e9, 300e9, 2, "tpu"),
    "v5e": Chip("TPU v5e", 16 * 2**30, 197e12, 819e9, 400e9, 1, "tpu"),
    "v5p": Chip("TPU v5p", 95 * 2**30, 459e12, 2765e9, 600e9, 2, "tpu"),
    "v6e": Chip("TPU v6e", 32 * 2**30, 918e12, 1638e9, 800e9, 1, "tpu"),
    "h100": Chip("NVIDIA H100 80GB", 80 * 2**30, 989e12, 3350e9, 900e9, 1, "gpu"),
}


def parse_slice(text: str) -> tuple[Chip, int]:
    """`v5p-128` (a TPU slice, counted in TensorCores), `v5e-256`, `h100-8` -> (chip, chips)."""
    match = re.fullmatch(r"([a-z0-9]+)-(\d+)", text.lower())
    if not match or match.group(1) not in CHIPS:
        raise ConfigError(f"--slice {text!r} must look like NAME-COUNT with NAME one of "
                          f"{', '.join(CHIPS)} (e.g. v5p-128, v5e-256, h100-8)")
    chip = CHIPS[match.group(1)]
    cores = int(match.group(2))
    if cores % chip.cores_per_chip:
        raise ConfigError(f"{text}: a {chip.name} chip has {chip.cores_per_chip} cores")
    return chip, cores // chip.cores_per_chip
