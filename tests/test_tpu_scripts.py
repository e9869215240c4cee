"""The TPU scripts' dry runs print the exact gcloud commands they would run."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {"TPU_PROJECT": "proj", "TPU_ZONE": "us-east5-a", "TPU_TYPE": "v5p-128",
       "RUN_NAME": "llama8b"}


def dry_run(*args, **env):
    result = subprocess.run(
        [sys.executable, str(ROOT / "tpu_scripts" / "tpu.py"), "--dry-run", *args],
        env={"PATH": os.environ["PATH"], **ENV, **env}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [shlex.split(line.split("   #")[0]) for line in result.stdout.splitlines()]


def test_create_requests_a_queued_resource_and_waits():
    create, describe = dry_run("create")
    assert create == ["gcloud", "compute", "tpus", "queued-resources", "create",
                      "llama8b-v5p-128", "--node-id=llama8b-v5p-128",
                      "--accelerator-type=v5p-128", "--runtime-version=v2-alpha-tpuv5",
                      "--project=proj", "--zone=us-east5-a"]
    assert describe[:6] == ["gcloud", "compute", "tpus", "queued-resources", "describe",
                            "llama8b-v5p-128"]


def test_multislice_create_names_node_count_and_prefix():
    [create, _] = dry_run("create", TPU_SLICES="2", TPU_TYPE="v5e-256", TPU_SPOT="1")
    assert "--node-count=2" in create and "--node-prefix=llama8b-v5litepod-256" in create
    assert "--accelerator-type=v5litepod-256" in create and "--spot" in create
    assert "--runtime-version=v2-alpha-tpuv5-lite" in create


def test_install_copies_the_checkout_and_installs_on_every_worker():
    scp, ssh = dry_run("install")
    assert scp[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse"]
    assert "--worker=all" in scp and "llama8b-v5p-128:~/llm_jax" in scp
    assert "--worker=all" in ssh
    command = next(a for a in ssh if a.startswith("--command="))
    assert "pip install -q -e '.[data]'" in command and "jax[tpu]==0.10.2" in command


def test_launch_runs_train_on_all_workers_with_the_config():
    [launch] = dry_run("launch", "--config", "llama3-8b-v5p-128", "run_dir=gs://b/r")
    assert launch[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "llama8b-v5p-128",
                          "--worker=all"]
    command = next(a for a in launch if a.startswith("--command="))
    assert "nohup llm-jax train --config llama3-8b-v5p-128 run_dir=gs://b/r" in command
    assert "> ~/llama8b.log 2>&1" in command


def test_multislice_launch_sets_megascale_per_slice():
    describe, first, second = dry_run("launch", "--config", "c", TPU_SLICES="2")
    assert describe[4:6] == ["describe", "llama8b-v5p-128-0"]
    assert "llama8b-v5p-128-0" in first and "llama8b-v5p-128-1" in second
    for slice_id, launch in enumerate((first, second)):
        command = next(a for a in launch if a.startswith("--command="))
        assert "MEGASCALE_COORDINATOR_ADDRESS=COORDINATOR_IP:8080" in command
        assert f"MEGASCALE_SLICE_ID={slice_id}" in command and "MEGASCALE_NUM_SLICES=2" in command


@pytest.mark.parametrize("verb, expected", [
    ("logs", "tail -n 200 -F ~/llama8b.log"),
    ("stop", "pkill -TERM -f 'llm-jax train' || true"),
])
def test_logs_and_stop(verb, expected):
    [command] = dry_run(verb)
    assert f"--command={expected}" in command


def test_delete_removes_the_queued_resource():
    [delete] = dry_run("delete")
    assert delete[3:6] == ["queued-resources", "delete", "llama8b-v5p-128"]
    assert "--force" in delete and "--quiet" in delete


def test_missing_settings_are_named():
    result = subprocess.run([sys.executable, str(ROOT / "tpu_scripts" / "tpu.py"), "--dry-run",
                             "create"], env={"PATH": os.environ["PATH"]}, capture_output=True,
                            text=True)
    assert result.returncode == 2
    assert "set TPU_PROJECT, TPU_ZONE, TPU_TYPE" in result.stderr
