"""Where a run reports: `metrics.jsonl` (one JSON object per logged step) and TensorBoard
event files (written by tensorboardX, no TensorFlow needed), in a local or `gs://` run directory.

Cloud Storage objects cannot be appended to, so in a `gs://` run directory each log rewrites
the whole `metrics.jsonl` (one object write: a reader never sees half a line), and
tensorboardX uploads its event file whole at each flush."""

from __future__ import annotations

import json
from typing import Any

import jax

from llm_jax import storage

METRICS_FILE = "metrics.jsonl"


class MetricsLogger:
    """Appends to metrics.jsonl; on resume, drops lines past the restored step so the file
    reads as one uninterrupted run. Only process 0 writes."""

    def __init__(self, run_dir: storage.PathLike, resume_step: int = 0):
        self.enabled = jax.process_index() == 0
        self.path = storage.path(run_dir) / METRICS_FILE
        self.writer = None
        self.lines: list[str] | None = None  # the whole file, where it is rewritten at each log
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = _truncate_after(self.path, resume_step)
        if storage.is_remote(self.path):
            self.lines = kept
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(self.path.parent / "tensorboard"))

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _plain(v) for k, v in values.items()}}
        line = json.dumps(record) + "\n"
        if self.lines is None:
            with self.path.open("a") as f:
                f.write(line)
        else:
            self.lines.append(line)
            self.path.write_text("".join(self.lines))
        for name, value in record.items():
            if name != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return value


def _truncate_after(path: storage.AnyPath, step: int) -> list[str]:
    """Drops the lines past `step`; returns the lines kept."""
    if not path.exists():
        return []
    kept = [line + "\n" for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(kept))
    return kept


def read_metrics(run_dir: storage.PathLike) -> list[dict[str, Any]]:
    path = storage.path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
