"""TPU slices as compile-only devices, on any machine.

libtpu (the `tpu` extra) compiles for a TPU topology with no TPU present: the devices of
`jax.experimental.topologies.get_topology_desc` can make a mesh, and a step lowered over it
compiles with XLA's TPU compiler (Mosaic kernels included) and reports the memory and cost
analyses a real slice would. Nothing can run on them.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from llm_jax.errors import UserError

# Chips of a slice -> the physical grid libtpu names it by (TPU documentation's topologies).
GRID_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
           256: "16x16"}  # v5e, v6e: one TensorCore per chip
GRID_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
           256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16"}  # v4, v5p: megacore
GRIDS = {"v4": GRID_3D, "v5p": GRID_3D, "v5e": GRID_2D, "v6e": GRID_2D}
CHIP_CONFIG = {"v4": "megacore"}  # libtpu's default v4 config counts each core as a device


def topology_name(generation: str, chips: int) -> str:
    """`v5p`, 64 -> `v5p:4x4x4`."""
    grids = GRIDS.get(generation)
    if grids is None:
        raise UserError(f"no TPU topology for {generation}; compile-only slices: "
                        f"{', '.join(GRIDS)}")
    if chips not in grids:
        raise UserError(f"{generation} slices come in {', '.join(map(str, sorted(grids)))} "
                        f"chips, not {chips}")
    return f"{generation}:{grids[chips]}"


def libtpu_installed() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def compile_only_devices(generation: str, chips: int, num_slices: int = 1) -> list[Any]:
    """The devices of `num_slices` slices of `chips` chips each, for compiling only."""
    if not libtpu_installed():
        raise UserError("compiling for a TPU slice needs libtpu: pip install -e '.[tpu]'")
    from jax.experimental import topologies

    bounds = (1, 1, 1) if chips < 4 else (2, 2, 1)  # chips per host: 4 on these slices
    topology = topologies.get_topology_desc(
        platform="tpu", topology_name=topology_name(generation, chips),
        chip_config_name=CHIP_CONFIG.get(generation, "default"),
        chips_per_host_bounds=bounds, num_slices=num_slices)
    return list(topology.devices)
