"""Start-up check that every process runs the same code on the same resolved config.

Processes started with other argv, other YAML files or another checkout would otherwise train
silently different things per host, or hang in a collective that only some of them reach.
Each process shares what it runs (the SHA-256 of every source file of the package and the
flattened config); every process compares and raises the same message, naming what differs
and on which processes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from llm_jax.config import Config
from llm_jax.errors import UserError

PACKAGE = Path(__file__).resolve().parents[1]
SHOWN = 5  # differing keys or files named in the message


def source_digests() -> dict[str, str]:
    """SHA-256 (first 12 hex digits) of each .py file of the package, by path."""
    return {str(path.relative_to(PACKAGE.parent)): hashlib.sha256(path.read_bytes()).hexdigest()[:12]
            for path in sorted(PACKAGE.rglob("*.py"))}


def flat_config(config: Config) -> dict[str, str]:
    """`key.sub` -> the value's JSON, for every leaf of the resolved config."""
    flat: dict[str, str] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{prefix}.{key}" if prefix else key)
        else:
            flat[prefix] = json.dumps(value, default=str)

    walk(dataclasses.asdict(config), "")
    return flat


def allgather_json(value: Any) -> list[Any]:
    """Every process's `value` (anything JSON can hold), in process order."""
    raw = np.frombuffer(json.dumps(value, sort_keys=True).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.array([raw.size], np.int64))
    padded = np.zeros(int(np.max(lengths)), np.uint8)
    padded[:raw.size] = raw
    gathered = multihost_utils.process_allgather(padded)
    return [json.loads(bytes(row[:int(n)]).decode())
            for row, n in zip(np.asarray(gathered), np.asarray(lengths).reshape(-1))]


def describe_differences(what: str, views: list[dict[str, str]]) -> str | None:
    """One line naming the keys that differ from process 0's and the processes that differ."""
    reference = views[0]
    keys = sorted({key for view in views[1:] for key in set(view) | set(reference)
                   if view.get(key) != reference.get(key)})
    if not keys:
        return None
    others = [i for i, view in enumerate(views) if view != reference]
    shown = "; ".join(
        f"{key}: " + ", ".join(f"{views[i].get(key, 'missing')} on process {i}"
                               for i in [0, *others])
        for key in keys[:SHOWN])
    more = f" (and {len(keys) - SHOWN} more)" if len(keys) > SHOWN else ""
    return (f"process{'es' if len(others) > 1 else ''} {', '.join(map(str, others))} "
            f"run{'' if len(others) > 1 else 's'} another {what} than process 0: {shown}{more}")


def check_processes_agree(config: Config) -> None:
    """Raises UserError on every process unless all run the same code and config."""
    if jax.process_count() == 1:
        return
    views = allgather_json({"code": source_digests(), "config": flat_config(config)})
    problems = [line for line in (
        describe_differences("version of the code", [view["code"] for view in views]),
        describe_differences("config", [view["config"] for view in views])) if line]
    if problems:
        raise UserError("the processes of this run disagree: " + " | ".join(problems)
                        + ". Start every process with the same checkout, command and config.")
