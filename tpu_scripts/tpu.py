#!/usr/bin/env python3
"""Run llm_jax on a Cloud TPU VM, a pod slice, or several slices (multislice).

    export TPU_PROJECT=my-project TPU_ZONE=us-east5-a TPU_TYPE=v5p-128 RUN_NAME=llama8b
    python tpu_scripts/tpu.py create            # queued resource; waits until ACTIVE
    python tpu_scripts/tpu.py install           # copies this checkout to every worker, pip install
    python tpu_scripts/tpu.py launch --config llama3-8b-v5p-128 run_dir=gs://bucket/runs/llama8b
    python tpu_scripts/tpu.py logs              # streams worker 0's log
    python tpu_scripts/tpu.py stop              # SIGTERM: the run saves a checkpoint and exits
    python tpu_scripts/tpu.py delete

Settings come from the environment (see `Settings`); `--dry-run` (or DRY_RUN=1) prints every
command exactly as it would run, and runs none. Only the Python standard library is needed, so
this works from any workstation with `gcloud` installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import subprocess
import sys
import time
from typing import Sequence

# Runtime images per TPU generation (Cloud TPU docs, "TPU software versions").
RUNTIME_VERSIONS = {"v4": "tpu-ubuntu2204-base", "v5litepod": "v2-alpha-tpuv5-lite",
                    "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"}
JAX_TPU = "jax[tpu]==0.10.2"
LIBTPU_INDEX = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"
REMOTE_DIR = "~/llm_jax"
MEGASCALE_PORT = 8080


class SettingsError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Settings:
    project: str
    zone: str
    accelerator: str  # e.g. v5p-128, v5litepod-256, v6e-64
    name: str  # queued resource and node name (node names get -0, -1, ... with slices > 1)
    run_name: str
    slices: int = 1
    runtime: str = ""
    spot: bool = False

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        missing = [k for k in ("TPU_PROJECT", "TPU_ZONE", "TPU_TYPE") if not env.get(k)]
        if missing:
            raise SettingsError(f"set {', '.join(missing)} (e.g. TPU_PROJECT=my-project "
                                "TPU_ZONE=us-east5-a TPU_TYPE=v5p-128)")
        accelerator = env["TPU_TYPE"].replace("v5e-", "v5litepod-")
        run_name = env.get("RUN_NAME", "llm-jax")
        slices = int(env.get("TPU_SLICES", "1"))
        if slices < 1:
            raise SettingsError(f"TPU_SLICES={slices} must be at least 1")
        generation = accelerator.split("-")[0]
        runtime = env.get("TPU_RUNTIME") or RUNTIME_VERSIONS.get(generation, "")
        if not runtime:
            raise SettingsError(f"no default runtime for {accelerator}; set TPU_RUNTIME")
        return cls(project=env["TPU_PROJECT"], zone=env["TPU_ZONE"], accelerator=accelerator,
                   name=env.get("TPU_NAME", f"{run_name}-{accelerator}"), run_name=run_name,
                   slices=slices, runtime=runtime, spot=env.get("TPU_SPOT", "") in ("1", "true"))

    @property
    def nodes(self) -> list[str]:
        """The TPU VM names: one per slice."""
        if self.slices == 1:
            return [self.name]
        return [f"{self.name}-{i}" for i in range(self.slices)]

    def scope(self) -> list[str]:
        return [f"--project={self.project}", f"--zone={self.zone}"]


def gcloud_tpu(settings: Settings, *args: str) -> list[str]:
    return ["gcloud", "compute", "tpus", *args, *settings.scope()]


def ssh(settings: Settings, node: str, command: str, worker: str = "all") -> list[str]:
    return gcloud_tpu(settings, "tpu-vm", "ssh", node, f"--worker={worker}",
                      f"--command={command}")


def create_commands(settings: Settings) -> list[list[str]]:
    command = gcloud_tpu(settings, "queued-resources", "create", settings.name,
                         f"--accelerator-type={settings.accelerator}",
                         f"--runtime-version={settings.runtime}")
    if settings.slices == 1:
        command.insert(6, f"--node-id={settings.name}")
    else:
        command[6:6] = [f"--node-count={settings.slices}", f"--node-prefix={settings.name}"]
    if settings.spot:
        command.append("--spot")
    return [command]


def describe_command(settings: Settings) -> list[str]:
    return gcloud_tpu(settings, "queued-resources", "describe", settings.name,
                      "--format=value(state.state)")


def install_commands(settings: Settings, source_dir: str) -> list[list[str]]:
    setup = (f"pip install -q --upgrade pip && cd {REMOTE_DIR} && pip install -q -e '.[data]' "
             f"&& pip install -q '{JAX_TPU}' -f {LIBTPU_INDEX}")
    commands = []
    for node in settings.nodes:
        commands.append(gcloud_tpu(settings, "tpu-vm", "scp", "--recurse", "--worker=all",
                                   source_dir, f"{node}:{REMOTE_DIR}"))
        commands.append(ssh(settings, node, setup))
    return commands


def log_path(settings: Settings) -> str:
    return f"~/{settings.run_name}.log"


def coordinator_command(settings: Settings) -> list[str]:
    """The internal IP of slice 0's first worker, which coordinates a multislice run."""
    return gcloud_tpu(settings, "tpu-vm", "describe", settings.nodes[0],
                      "--format=value(networkEndpoints[0].ipAddress)")


def launch_commands(settings: Settings, train_args: Sequence[str],
                    coordinator: str = "") -> list[list[str]]:
    """`llm-jax train` on every worker of every slice, in the background, logging to a file.

    With several slices, the MEGASCALE_* variables tell JAX which slice each worker is in and
    where slice 0's first worker coordinates; `jax.distributed.initialize()` reads them."""
    train = " ".join(shlex.quote(a) for a in ["llm-jax", "train", *train_args])
    commands = []
    for slice_id, node in enumerate(settings.nodes):
        env = ""
        if settings.slices > 1:
            env = (f"MEGASCALE_COORDINATOR_ADDRESS={coordinator}:{MEGASCALE_PORT} "
                   f"MEGASCALE_NUM_SLICES={settings.slices} MEGASCALE_SLICE_ID={slice_id} "
                   f"MEGASCALE_PORT={MEGASCALE_PORT} ")
        remote = (f"cd {REMOTE_DIR} && {env}nohup {train} > {log_path(settings)} 2>&1 "
                  "< /dev/null &")
        commands.append(ssh(settings, node, remote))
    return commands


def logs_commands(settings: Settings, worker: str) -> list[list[str]]:
    return [ssh(settings, settings.nodes[0], f"tail -n 200 -F {log_path(settings)}", worker)]


def stop_commands(settings: Settings) -> list[list[str]]:
    """SIGTERM, which the training loop answers by saving a checkpoint and exiting."""
    return [ssh(settings, node, "pkill -TERM -f 'llm-jax train' || true")
            for node in settings.nodes]


def delete_commands(settings: Settings) -> list[list[str]]:
    return [gcloud_tpu(settings, "queued-resources", "delete", settings.name, "--force",
                       "--quiet")]


def run(commands: list[list[str]], dry_run: bool) -> None:
    for command in commands:
        print(shlex.join(command), flush=True)
        if not dry_run:
            subprocess.run(command, check=True)


def wait_until_active(settings: Settings, dry_run: bool, poll_seconds: int = 30) -> None:
    command = describe_command(settings)
    print(shlex.join(command) + "   # repeated until ACTIVE", flush=True)
    if dry_run:
        return
    while True:
        state = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        print(f"queued resource {settings.name}: {state.strip()}", flush=True)
        if state.strip() == "ACTIVE":
            return
        if state.strip() in ("FAILED", "SUSPENDED"):
            raise SystemExit(f"queued resource {settings.name} is {state.strip()}")
        time.sleep(poll_seconds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        default=os.environ.get("DRY_RUN", "") in ("1", "true"),
                        help="print the commands, run nothing (also DRY_RUN=1)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("create", help="request the slice(s) and wait until ACTIVE")
    install = commands.add_parser("install", help="copy this checkout and pip install on all")
    install.add_argument("--source", default=".", help="directory to copy (the repository)")
    launch = commands.add_parser("launch", help="start `llm-jax train` on every worker")
    launch.add_argument("--config", required=True, help="preset or YAML, as for llm-jax train")
    launch.add_argument("overrides", nargs="*", help="key.sub=value, as for llm-jax train")
    logs = commands.add_parser("logs", help="stream the run's log")
    logs.add_argument("--worker", default="0")
    commands.add_parser("stop", help="SIGTERM the run (it checkpoints and exits)")
    commands.add_parser("delete", help="delete the queued resource and its slices")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as err:
        print(f"tpu.py: {err}", file=sys.stderr)
        return 2
    if args.command == "create":
        run(create_commands(settings), args.dry_run)
        wait_until_active(settings, args.dry_run)
    elif args.command == "install":
        run(install_commands(settings, args.source), args.dry_run)
    elif args.command == "launch":
        coordinator = ""
        if settings.slices > 1:
            command = coordinator_command(settings)
            print(shlex.join(command), flush=True)
            coordinator = "COORDINATOR_IP" if args.dry_run else subprocess.run(
                command, check=True, capture_output=True, text=True).stdout.strip()
        train_args = ["--config", args.config, *args.overrides]
        run(launch_commands(settings, train_args, coordinator), args.dry_run)
    elif args.command == "logs":
        run(logs_commands(settings, args.worker), args.dry_run)
    elif args.command == "stop":
        run(stop_commands(settings), args.dry_run)
    else:
        run(delete_commands(settings), args.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
