"""Multi-host start-up: `jax.distributed.initialize()` when the environment names several
processes (Cloud TPU pods, SLURM, Open MPI, or an explicit coordinator); a no-op on one host.

`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` start N processes by hand,
for example N local processes that each simulate one host (`llm-jax launch`).
"""

from __future__ import annotations

import os

import jax

from llm_jax.errors import UserError

MULTI_PROCESS_MARKERS = ("JAX_COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS")


def _is_multi_process() -> bool:
    if any(os.environ.get(name) for name in MULTI_PROCESS_MARKERS):
        return True
    if "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
        return True
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1 or int(
        os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1


def _explicit_processes() -> dict[str, int]:
    """`num_processes` and `process_id` from JAX_NUM_PROCESSES / JAX_PROCESS_ID, when set."""
    names = {"num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}
    given = {key: os.environ[name] for key, name in names.items() if os.environ.get(name)}
    if not given:
        return {}
    if len(given) == 1:
        raise UserError("set JAX_NUM_PROCESSES and JAX_PROCESS_ID together (with "
                        "JAX_COORDINATOR_ADDRESS), or neither")
    try:
        values = {key: int(value) for key, value in given.items()}
    except ValueError:
        raise UserError(f"JAX_NUM_PROCESSES={given['num_processes']!r} and JAX_PROCESS_ID="
                        f"{given['process_id']!r} must be integers") from None
    if not 0 <= values["process_id"] < values["num_processes"]:
        raise UserError(f"JAX_PROCESS_ID={values['process_id']} must be in "
                        f"[0, JAX_NUM_PROCESSES={values['num_processes']})")
    if not os.environ.get("JAX_COORDINATOR_ADDRESS"):
        raise UserError("JAX_NUM_PROCESSES and JAX_PROCESS_ID need JAX_COORDINATOR_ADDRESS "
                        "(host:port of process 0)")
    return values


def initialize_distributed() -> None:
    """Must run before anything touches a device; safe to call more than once."""
    if _is_multi_process() and not jax.distributed.is_initialized():
        jax.distributed.initialize(**_explicit_processes())
