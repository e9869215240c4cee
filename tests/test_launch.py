"""`llm-jax launch`: N local processes joined by `jax.distributed`, each one simulated host."""

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_jax.cli import main
from llm_jax.parallel.launch import free_port, launch, process_env

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import jax, jax.numpy as jnp, numpy as np
from jax.experimental import multihost_utils
from llm_jax.parallel.distributed import initialize_distributed
initialize_distributed()
local = np.full((jax.local_device_count(),), jax.process_index() + 1.0, np.float32)
total = multihost_utils.process_allgather(local).sum()
print(f"RESULT {jax.process_index()} {jax.process_count()} {jax.device_count()} {total}")
"""


def test_processes_join_one_runtime_and_sum_across_hosts(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    port = free_port()
    env = [process_env(i, 2, 4, port, base=dict(os.environ)) for i in range(2)]
    children = [subprocess.Popen([sys.executable, str(script)], env=e, cwd=ROOT, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for e in env]
    outputs = [child.communicate(timeout=120) for child in children]
    results = sorted(line.split()[1:] for out, _ in outputs for line in out.splitlines()
                     if line.startswith("RESULT"))
    assert results == [["0", "2", "8", "12.0"], ["1", "2", "8", "12.0"]], outputs


def test_launch_runs_a_command_on_every_process_and_prefixes_its_lines():
    out = io.StringIO()
    assert launch(["plan", "--config", "tiny", "--no-compile"], processes=2, devices=4,
                  timeout=300, out=out) == 0
    lines = out.getvalue().splitlines()
    for index in (0, 1):  # each process sees the global mesh of both hosts' devices
        assert (f"[process {index}] mesh: 8 devices = data=1 x pipe=1 x fsdp=8 x context=1 x "
                "expert=1 x tensor=1") in lines


def test_a_failing_process_stops_the_launch_with_its_exit_code():
    out = io.StringIO()
    code = launch(["train", "--config", "no-such-preset"], processes=2, devices=2, timeout=120,
                  out=out)
    assert code == 2
    assert "[process 0] llm-jax train: error:" in out.getvalue()


@pytest.mark.parametrize("env, message", [
    ({"JAX_NUM_PROCESSES": "2"}, "set JAX_NUM_PROCESSES and JAX_PROCESS_ID together"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2", "JAX_COORDINATOR_ADDRESS": "localhost:1"},
     "JAX_PROCESS_ID=2 must be in [0, JAX_NUM_PROCESSES=2)"),
    ({"JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0", "JAX_COORDINATOR_ADDRESS": "localhost:1"},
     "must be integers"),
])
def test_bad_process_settings_fail_with_a_message(monkeypatch, capsys, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if "JAX_COORDINATOR_ADDRESS" not in env:  # JAX_NUM_PROCESSES alone marks no multi-process run
        monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1")
    assert main(["plan", "--config", "tiny", "--no-compile"]) == 2
    assert message in capsys.readouterr().err
