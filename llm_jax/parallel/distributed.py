"""Multi-host start-up: `jax.distributed.initialize()` when the environment names several
processes (Cloud TPU pods, SLURM, Open MPI, or an explicit coordinator); a no-op on one host."""

from __future__ import annotations

import os

import jax

MULTI_PROCESS_MARKERS = ("JAX_COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS")


def _is_multi_process() -> bool:
    if any(os.environ.get(name) for name in MULTI_PROCESS_MARKERS):
        return True
    if "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
        return True
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1 or int(
        os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1


def initialize_distributed() -> None:
    """Must run before anything touches a device; safe to call more than once."""
    if _is_multi_process() and not jax.distributed.is_initialized():
        jax.distributed.initialize()
