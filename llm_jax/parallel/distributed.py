"""Multi-host start-up: `jax.distributed.initialize()` when the environment names several
processes (Cloud TPU pods, SLURM, Open MPI, or an explicit coordinator); a no-op on one host.

`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` start N processes by hand,
for example N local processes that each simulate one host (`llm-jax launch`).

`LLM_JAX_HEARTBEAT_TIMEOUT` (seconds) bounds how long the others wait for a process that died
without a word (SIGKILL, a lost host): after it, every process stops with an error instead of
hanging in a collective.
"""

from __future__ import annotations

import os

import jax

from llm_jax.errors import UserError

MULTI_PROCESS_MARKERS = ("JAX_COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS")
HEARTBEAT_TIMEOUT_ENV = "LLM_JAX_HEARTBEAT_TIMEOUT"
# JAX's own default: long enough that a host busy compiling or writing a checkpoint on a pod
# is not taken for dead.
DEFAULT_HEARTBEAT_TIMEOUT = 100


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


def heartbeat_timeout() -> int:
    """Seconds without a heartbeat after which a process counts as dead."""
    value = os.environ.get(HEARTBEAT_TIMEOUT_ENV, "")
    if not value:
        return DEFAULT_HEARTBEAT_TIMEOUT
    try:
        seconds = int(value)
    except ValueError:
        seconds = 0
    if seconds < 1:
        raise UserError(f"{HEARTBEAT_TIMEOUT_ENV}={value!r} must be a whole number of seconds >= 1")
    return seconds


def initialize_distributed() -> None:
    """Must run before anything touches a device; safe to call more than once."""
    if _is_multi_process() and not jax.distributed.is_initialized():
        jax.distributed.initialize(**_explicit_processes(),
                                   heartbeat_timeout_seconds=heartbeat_timeout())


def process_label() -> str:
    """"process i of n" once several processes are joined, else "" (without starting JAX)."""
    if not jax.distributed.is_initialized() or jax.process_count() == 1:
        return ""
    return f"process {jax.process_index()} of {jax.process_count()}"
