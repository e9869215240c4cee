"""Reading post-training records (JSONL, optionally gzip) and accounting for the bad ones.

Every record either becomes one or more training examples or is skipped with a reason
(`RecordError`). `SkipReport` counts the reasons, keeps a few examples of each for a person to
look at, is printed and saved next to the run, and stops the run with a `UserError` when more
than `post.max_skipped_fraction` of the records were unusable: bad data is never trained on
silently, and a mostly-broken file is never trained on at all.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
from pathlib import Path
from typing import Any, Iterator

from llm_jax.errors import UserError

SAMPLES_PER_REASON = 3


class RecordError(ValueError):
    """One record cannot be used; `reason` is a short stable name (`missing_fields`, ...)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclasses.dataclass(frozen=True)
class Record:
    """A parsed JSON object and where it came from (for messages about it)."""

    source: str
    line: int
    value: Any

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def data_files(spec: str) -> list[Path]:
    """`post.data`: comma-separated paths or globs, each matching at least one file."""
    if not spec.strip():
        raise UserError("post.data is empty: give the JSONL file(s) of the post-training data")
    files: list[Path] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        matches = sorted(glob.glob(part)) if any(c in part for c in "*?[") else [part]
        if not matches or not all(Path(m).is_file() for m in matches):
            raise UserError(f"post.data: no file at {part}")
        files.extend(Path(m) for m in matches)
    return files


def _lines(path: Path) -> Iterator[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        yield from f


class SkipReport:
    """Counts records in and examples out, and the skipped records by reason."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.records = 0
        self.examples = 0
        self.skipped: collections.Counter[str] = collections.Counter()
        self.samples: dict[str, list[str]] = collections.defaultdict(list)
        self.notes: collections.Counter[str] = collections.Counter()  # kept, but changed

    def skip(self, record: Record | None, error: RecordError) -> None:
        self.skipped[error.reason] += 1
        if len(self.samples[error.reason]) < SAMPLES_PER_REASON:
            where = record.where if record is not None else "?"
            self.samples[error.reason].append(f"{where}: {error.detail or error.reason}")

    def note(self, name: str) -> None:
        self.notes[name] += 1

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def to_dict(self) -> dict[str, Any]:
        return {"what": self.what, "records": self.records, "examples": self.examples,
                "skipped": dict(self.skipped), "skipped_samples": dict(self.samples),
                "notes": dict(self.notes)}

    def summary(self) -> str:
        text = f"{self.what}: {self.records} records -> {self.examples} examples"
        if self.skipped:
            reasons = ", ".join(f"{n} {r}" for r, n in self.skipped.most_common())
            text += f"; skipped {self.skipped_total} ({reasons})"
        if self.notes:
            text += "; " + ", ".join(f"{n} {r}" for r, n in self.notes.most_common())
        return text

    def check(self, max_skipped_fraction: float) -> None:
        """Fails when nothing is left or too much was skipped, saying what went wrong."""
        details = "; ".join(f"{reason} e.g. {samples[0]}" for reason, samples in
                            self.samples.items() if samples)
        if self.examples == 0:
            raise UserError(f"{self.summary()}: nothing to train on. {details}")
        # of the examples the data would have given (a seed task holds several)
        fraction = self.skipped_total / (self.skipped_total + self.examples)
        if fraction > max_skipped_fraction:
            raise UserError(
                f"{self.summary()}: {fraction:.0%} of the records are unusable, more than "
                f"post.max_skipped_fraction={max_skipped_fraction}. Fix the data (or raise "
                f"data.seq_len for long ones, or post.max_skipped_fraction). {details}")

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def read_records(spec: str, report: SkipReport) -> Iterator[Record]:
    """Each JSON object of the files; lines that are not one are counted as skipped."""
    for path in data_files(spec):
        for number, line in enumerate(_lines(path), start=1):
            if not line.strip():
                continue
            report.records += 1
            record = Record(str(path), number, None)
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                report.skip(record, RecordError("invalid_json", str(err)))
                continue
            if not isinstance(value, dict):
                report.skip(record, RecordError("not_an_object", type(value).__name__))
                continue
            yield Record(str(path), number, value)


def text_field(value: dict[str, Any], key: str, allow_empty: bool = False) -> str:
    """`value[key]` as a string, or the `RecordError` that says what is wrong with it."""
    if key not in value or value[key] is None:
        raise RecordError("missing_fields", f"no '{key}' (fields: {sorted(value)})")
    text = value[key]
    if not isinstance(text, str):
        raise RecordError("missing_fields", f"'{key}' is a {type(text).__name__}, not text")
    if not allow_empty and not text.strip():
        raise RecordError(f"empty_{key}" if key in ("prompt", "completion") else "empty_field",
                          f"'{key}' is empty")
    return text
