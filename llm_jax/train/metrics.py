"""Where a run reports: `metrics.jsonl` (one JSON object per logged step) and TensorBoard
event files (written by tensorboardX, no TensorFlow needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax

METRICS_FILE = "metrics.jsonl"


class MetricsLogger:
    """Appends to metrics.jsonl; on resume, drops lines past the restored step so the file
    reads as one uninterrupted run. Only process 0 writes."""

    def __init__(self, run_dir: str | Path, resume_step: int = 0):
        self.enabled = jax.process_index() == 0
        self.path = Path(run_dir) / METRICS_FILE
        self.writer = None
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _truncate_after(self.path, resume_step)
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _plain(v) for k, v in values.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
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


def _truncate_after(path: Path, step: int) -> None:
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in kept))


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
