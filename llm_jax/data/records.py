"""Reading post-training records (`post.data`: JSONL, optionally gzip) and accounting for the bad ones.

Lines are read by `llm_jax.data.readers` (its bad-input policy: lines that are not UTF-8, not
JSON or not an object, and a damaged gzip stream, are counted and skipped). Every record then
either becomes one or more training examples or is skipped with a reason (`RecordError`).
`SkipReport` counts both kinds, keeps a few `file:line` examples of each reason for a person to
look at, is printed and saved next to the run, and stops the run with a `UserError` when more
than `post.max_skipped_fraction` of the records were unusable: bad data is never trained on
silently, and a mostly-broken file is never trained on at all.
"""

from __future__ import annotations

import collections
import json
from typing import Any, Iterator

from llm_jax import storage
from llm_jax.data.readers import ReadProblems, Record, RecordError, read_jsonl, text_field
from llm_jax.errors import UserError

__all__ = ["Record", "RecordError", "SkipReport", "data_files", "read_records", "text_field"]


def data_files(spec: str) -> list[storage.AnyPath]:
    """`post.data`: comma-separated paths or globs (local or `gs://`), each matching at least
    one file."""
    if not spec.strip():
        raise UserError("post.data is empty: give the JSONL file(s) of the post-training data")
    files: list[storage.AnyPath] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        matches = storage.glob(part) if any(c in part for c in "*?[") else [part]
        if not matches or not all(storage.path(m).is_file() for m in matches):
            raise UserError(f"post.data: no file at {part}")
        files.extend(storage.path(m) for m in matches)
    return files


class SkipReport:
    """Counts records in and examples out, and the skipped records by reason."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.source = ""  # the post.data that `read_records` read
        self.examples = 0
        self.problems = ReadProblems()
        self.notes: collections.Counter[str] = collections.Counter()  # kept, but changed

    @property
    def records(self) -> int:
        return self.problems.read

    @property
    def skipped(self) -> collections.Counter[str]:
        return self.problems.counts

    @property
    def skipped_total(self) -> int:
        return self.problems.skipped

    def skip(self, record: Record, error: RecordError) -> None:
        self.problems.add(error.reason, record.where, error.detail)

    def note(self, name: str) -> None:
        self.notes[name] += 1

    def to_dict(self) -> dict[str, Any]:
        return {"what": self.what, "source": self.source, "records": self.records,
                "examples": self.examples, "skipped": dict(self.skipped),
                "skipped_samples": dict(self.problems.samples), "notes": dict(self.notes)}

    def summary(self) -> str:
        text = f"{self.what}: {self.records} records -> {self.examples} examples"
        if self.skipped:
            text += f"; skipped {self.skipped_total} ({self.problems.summary()})"
        if self.notes:
            text += "; " + ", ".join(f"{n} {r}" for r, n in self.notes.most_common())
        return text

    def check(self, max_skipped_fraction: float) -> None:
        """Fails when nothing is left or too much was skipped, saying what went wrong."""
        if self.examples == 0:
            found = self.problems.describe() if self.skipped else "it holds no records"
            raise UserError(f"{self.what}: nothing to train on in {self.source}: {found}")
        # of the examples the data would have given (a seed task holds several)
        fraction = self.skipped_total / (self.skipped_total + self.examples)
        if fraction > max_skipped_fraction:
            raise UserError(
                f"{self.what}: {fraction:.0%} of the records in {self.source} are unusable "
                f"({self.problems.summary()}), more than post.max_skipped_fraction="
                f"{max_skipped_fraction}. Fix the data (or raise data.seq_len for long ones, or "
                f"post.max_skipped_fraction); {self.problems.describe()}")

    def save(self, path: storage.PathLike) -> None:
        path = storage.path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def read_records(spec: str, report: SkipReport) -> Iterator[Record]:
    """Each JSON object of the `post.data` files; other lines are counted in `report`."""
    report.source = spec
    for path in data_files(spec):
        yield from read_jsonl(path, report.problems)
