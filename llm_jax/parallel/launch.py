"""`llm-jax launch`: N local processes that each play one host of a pod.

Each process gets its own `JAX_PROCESS_ID`, the same `JAX_COORDINATOR_ADDRESS` (a free port on
localhost) and `JAX_NUM_PROCESSES`, and `--xla_force_host_platform_device_count` simulated CPU
devices, so a multi-host run (sharding across processes, collectives over gloo, per-host data,
checkpoints written by every host) can be tried on one workstation. Every line a process prints
is prefixed with its index; when one process fails the others are stopped, so nothing hangs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Sequence

from llm_jax.errors import UserError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def process_env(index: int, processes: int, devices: int, port: int,
                base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of process `index` of `processes` on this machine."""
    env = dict(os.environ if base is None else base)
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=str(processes),
               JAX_PROCESS_ID=str(index), JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               XLA_FLAGS=" ".join(flags + [f"--xla_force_host_platform_device_count={devices}"]))
    return env


def _relay(index: int, stream: IO[str], out: IO[str], lock: threading.Lock) -> None:
    for line in stream:
        with lock:
            out.write(f"[process {index}] {line}")
            out.flush()


def launch(argv: Sequence[str], processes: int, devices: int, timeout: float | None = None,
           out: IO[str] = sys.stdout) -> int:
    """Runs `python -m llm_jax <argv>` as `processes` processes of `devices` devices each;
    returns the first non-zero exit code (0 when all succeed)."""
    if processes < 1 or devices < 1:
        raise UserError(f"--processes={processes} and --devices-per-process={devices} must be >= 1")
    if not argv:
        raise UserError("give the command to run, e.g. llm-jax launch --processes 2 -- train "
                        "--config tiny")
    port, lock = free_port(), threading.Lock()
    children = [subprocess.Popen([sys.executable, "-m", "llm_jax", *argv],
                                 env=process_env(i, processes, devices, port),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for i in range(processes)]
    # One relay per stream: a pipe shared by stdout and stderr (libraries write to the latter
    # from C++) would splice their lines together mid-line.
    relays = [threading.Thread(target=_relay, args=(i, stream, out, lock), daemon=True)
              for i, child in enumerate(children) for stream in (child.stdout, child.stderr)]
    for relay in relays:
        relay.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    code = 0
    try:
        while any(child.poll() is None for child in children):
            failed = [c.returncode for c in children if c.returncode not in (None, 0)]
            if failed or (deadline is not None and time.monotonic() > deadline):
                code = failed[0] if failed else 124
                break
            time.sleep(0.2)
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for relay in relays:
            relay.join(timeout=5)
    return code or next((c.returncode for c in children if c.returncode), 0)
