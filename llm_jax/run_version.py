"""A run's version: a hash of its resolved config and of the library code that trains it.

Experiments name each run's directory by it, so repeating a command finds an unchanged arm's
finished run and trains nothing, while a changed setting or a changed `llm_jax` source file
gets a directory of its own instead of mixing old and new results. The git commit is recorded
beside it but not hashed: a commit that touches only experiments, tests or docs changes
nothing a run computes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from pathlib import Path

from llm_jax.config import Config

PACKAGE = Path(__file__).resolve().parent


@functools.cache
def code_version() -> str:
    """12 hex digits of a hash over every `llm_jax` source file, its path and bytes."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        digest.update(f"{path.relative_to(PACKAGE)}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def config_hash(config: Config) -> str:
    """12 hex digits naming what a run computes: its settings (all but where it is written)
    and the code version."""
    settings = config.to_dict()
    settings.pop("run_dir")
    text = json.dumps({"config": settings, "code": code_version()}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@functools.cache
def git_commit() -> str:
    """HEAD of the checkout the package runs from, `-dirty` when tracked files differ from it;
    `unknown` outside a git checkout."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=PACKAGE, capture_output=True, text=True,
                              timeout=30)
        if done.returncode:
            raise OSError(done.stderr.strip())
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")
