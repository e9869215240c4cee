"""`report.json` of a curation run: what each step did, built from datatrove's per-task stats.

Every task of every stage saves its steps' stats (`<logs>/stats/<rank>.json`, a list in pipeline
order); summing all rank files, including those of tasks finished by an earlier run, gives the
numbers of the whole corpus however often the run was resumed.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class ReportedStep:
    """Where one curation step and the tallies around it sit in a stage's pipeline."""

    name: str
    stage: int
    before: int  # position of the Tally in front of the step
    after: int  # position of the Tally behind it
    step: int
    applies_to: tuple[str, ...]
    rejected_dir: str | None


def _total(value: Any) -> float:
    return value.get("total", 0) if isinstance(value, dict) else (value or 0)


def stage_stats(logs: str | Path) -> list[dict[str, float]]:
    """Per pipeline position, each stat's total over all ranks of one stage."""
    summed: list[dict[str, float]] = []
    for path in sorted(Path(logs, "stats").glob("*.json")):
        for position, step in enumerate(json.loads(path.read_text())):
            while len(summed) <= position:
                summed.append({})
            for key, value in step.get("stats", {}).items():
                summed[position][key] = summed[position].get(key, 0) + _total(value)
    return summed


def per_rank_stat(logs: str | Path, position: int, key: str, tasks: int) -> list[int]:
    """One stat of one step for each rank (0 for ranks without a stats file)."""
    values = [0] * tasks
    for rank in range(tasks):
        path = Path(logs, "stats", f"{rank:05d}.json")
        if path.is_file():
            steps = json.loads(path.read_text())
            values[rank] = int(_total(steps[position].get("stats", {}).get(key, 0)))
    return values


def step_entry(step: ReportedStep, stats: list[dict[str, float]], sample_path: str | None) -> dict[str, Any]:
    before, after, own = stats[step.before], stats[step.after], stats[step.step]
    reasons = {key.removeprefix("dropped_"): int(value) for key, value in sorted(own.items())
               if key.startswith("dropped_")}
    entry = {
        "name": step.name,
        "documents_in": int(before.get("documents", 0)),
        "documents_out": int(after.get("documents", 0)),
        "bytes_in": int(before.get("bytes", 0)),
        "bytes_out": int(after.get("bytes", 0)),
        "applies_to": list(step.applies_to),
    }
    if reasons:
        entry["dropped_reasons"] = reasons
    if "removed_only_here" in own:
        entry["removed_only_here"] = {"documents": int(own["removed_only_here"]),
                                      "bytes": int(own.get("removed_only_here_bytes", 0))}
    if "changed" in own:
        entry["documents_changed"] = int(own["changed"])
    lines = {key.removeprefix("line-filter-"): int(value) for key, value in sorted(own.items())
             if key.startswith("line-filter-")}
    if lines:
        entry["lines_removed"] = lines
    if sample_path:
        entry["rejected_sample"] = sample_path
    return entry


def merge_samples(rejected_dir: str | Path, out_path: Path, limit: int) -> str | None:
    """Joins the per-rank rejected samples of a step into one JSONL file of at most `limit` lines."""
    lines: list[str] = []
    for path in sorted(Path(rejected_dir).glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if len(lines) >= limit:
                break
            lines.append(line)
    if not lines:
        return None
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(out_path)


def format_report(report: dict[str, Any]) -> str:
    """The report as a table for the terminal."""
    rows = [("step", "applies to", "docs in", "docs out", "MB in", "MB out")]
    rows.append(("read", "", "", f"{report['documents_in']:,}", "", f"{report['bytes_in'] / 1e6:.2f}"))
    for step in report["steps"]:
        rows.append((step["name"], ",".join(step["applies_to"]), f"{step['documents_in']:,}",
                     f"{step['documents_out']:,}", f"{step['bytes_in'] / 1e6:.2f}",
                     f"{step['bytes_out'] / 1e6:.2f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in
                       enumerate(zip(row, widths))) for row in rows]
    problems = report.get("read_problems", {}).get("counts", {})
    if problems:
        lines.append("unusable input: " + ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in problems.items()))
    return "\n".join(lines)
