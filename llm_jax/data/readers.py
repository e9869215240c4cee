"""Reading text files, JSON Lines (optionally gzipped) and TFDS splits under one bad-input policy.

Every reader of user data goes through here: curate's sources, post-training records and the
eval tasks' documents, GSM8K problems and multiple-choice items. The policy:

- Bad input never stops a read. It is counted by reason in a `ReadProblems`, with a few
  `file:line` examples of each reason:

      invalid_utf8        a line (or part of a text file) holds bytes that are not UTF-8
      malformed_json      a line is not JSON
      not_an_object       a line is JSON, but not an object
      missing_text_field  a record has no string under the text field(s) the caller reads
      missing_fields, ... the caller's own `RecordError` reasons for a record it cannot use
      corrupt_gzip        a gzip stream is truncated or damaged: the lines before it are kept
      unreadable_file     a file cannot be read at all

- Callers keep the tally where a person finds it (curate's report.json, post-training's
  post_data.json, a line that eval prints).
- The one error is for a source with nothing usable left: `collect` raises a one-line
  `UserError` that names the source, its most common reasons and an example of each.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import gzip
import itertools
import json
import re
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from llm_jax import storage
from llm_jax.errors import UserError

T = TypeVar("T")
SAMPLES_PER_REASON = 3
_GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)  # BadGzipFile is an OSError: test it first
_UNDECODED = re.compile("[\udc80-\udcff]")  # bytes kept by errors="surrogateescape"
_JSON_TYPES = {"list": "array", "str": "string", "int": "number", "float": "number",
               "bool": "boolean", "NoneType": "null"}


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


class ReadProblems:
    """What a read met (`read`: lines, text parts or TFDS records, usable or not) and what it
    could not use, by reason, with the first few places of each."""

    def __init__(self) -> None:
        self.read = 0
        self.counts: collections.Counter[str] = collections.Counter()
        self.samples: dict[str, list[str]] = {}

    def add(self, reason: str, where: str, detail: str = "") -> None:
        self.counts[reason] += 1
        samples = self.samples.setdefault(reason, [])
        if len(samples) < SAMPLES_PER_REASON:
            samples.append(f"{where} ({detail})" if detail else where)

    @property
    def skipped(self) -> int:
        return sum(self.counts.values())

    @property
    def examples(self) -> list[str]:
        """`reason: place` lines, the most common reason first."""
        return [f"{reason}: {sample}" for reason, _ in self._ranked() for sample in self.samples[reason]]

    def update(self, saved: dict[str, Any]) -> None:
        """Adds a tally saved by `to_dict` (one per parallel reader, or per source)."""
        self.read += saved.get("read", 0)
        self.counts.update(saved.get("counts", {}))
        for reason, samples in saved.get("samples", {}).items():
            mine = self.samples.setdefault(reason, [])
            mine.extend(samples[: SAMPLES_PER_REASON - len(mine)])

    def to_dict(self) -> dict[str, Any]:
        return {"read": self.read, "counts": dict(sorted(self.counts.items())),
                "samples": {reason: list(self.samples[reason]) for reason in sorted(self.samples)}}

    def _ranked(self) -> list[tuple[str, int]]:
        return sorted(self.counts.items(), key=lambda item: (-item[1], item[0]))

    def summary(self) -> str:
        """`3 malformed json, 1 invalid utf8`: the reasons, most common first."""
        return ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in self._ranked())

    def describe(self, reasons: int = 3) -> str:
        """One line: how much was skipped, and the most common reasons with a place of each."""
        ranked = self._ranked()
        parts = [f"{n} {reason.replace('_', ' ')} (e.g. {self.samples[reason][0]})"
                 for reason, n in ranked[:reasons]]
        more = f", {sum(n for _, n in ranked[reasons:])} more" if len(ranked) > reasons else ""
        return f"skipped {self.skipped} of {self.read}: {', '.join(parts)}{more}"

    def nothing_usable(self, source: str) -> UserError:
        if not self.counts:
            return UserError(f"nothing usable in {source}: it holds no records")
        return UserError(f"nothing usable in {source}: {self.describe()}")


@contextlib.contextmanager
def _open_binary(path: str) -> Iterator[Any]:
    """A local or `gs://` file for reading bytes, gunzipped when its name ends in .gz."""
    with storage.path(path).open("rb") as raw:
        yield gzip.GzipFile(fileobj=raw, mode="rb") if path.endswith(".gz") else raw


def read_jsonl(path: str | Path, problems: ReadProblems) -> Iterator[Record]:
    """The JSON objects of a JSONL file (gunzipped when the name ends in .gz); every other
    non-blank line, and a damaged gzip stream, is counted in `problems`."""
    path = str(path)
    number = 0
    try:
        with _open_binary(path) as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                problems.read += 1
                where = f"{path}:{number}"
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    problems.add("invalid_utf8", where, f"byte {err.start} of the line")
                    continue
                try:
                    value = json.loads(text.removeprefix("\ufeff") if number == 1 else text)
                except json.JSONDecodeError as err:
                    problems.add("malformed_json", where, f"{err.msg} at column {err.colno}")
                    continue
                if not isinstance(value, dict):
                    problems.add("not_an_object", where, f"a JSON {_JSON_TYPES[type(value).__name__]}")
                    continue
                yield Record(path, number, value)
    except _GZIP_ERRORS as err:
        problems.add("corrupt_gzip", f"{path}:{number + 1}", f"the gzip stream breaks off: {err}")
    except OSError as err:
        problems.add("unreadable_file", path, err.strerror or str(err))


def read_text(path: str | Path, problems: ReadProblems) -> str | None:
    """A whole text file (gunzipped when the name ends in .gz), with bytes that are not UTF-8
    kept as surrogates for `bad_byte_line`; None, counted, when it cannot be read. A damaged .gz
    text file is skipped whole: its cut-off end would be a wrong document."""
    path = str(path)
    try:
        raw = storage.path(path).read_bytes()
        if path.endswith(".gz"):
            raw = gzip.decompress(raw)
    except _GZIP_ERRORS as err:
        problems.add("corrupt_gzip", path, str(err))
        return None
    except OSError as err:
        problems.add("unreadable_file", path, err.strerror or str(err))
        return None
    return raw.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")


def bad_byte_line(text: str, start: int = 0, end: int | None = None) -> int | None:
    """The line number (from 1) in `text` of the first byte in `text[start:end]` that was not
    UTF-8 (see `read_text`), or None when there is none."""
    match = _UNDECODED.search(text, start, len(text) if end is None else end)
    return None if match is None else text.count("\n", 0, match.start()) + 1


def joined_text(value: dict[str, Any], fields: Sequence[str]) -> str:
    """The string `fields` of a record joined by blank lines; `missing_text_field` otherwise."""
    if any(not isinstance(value.get(name), str) for name in fields):
        found = ", ".join(value) or "none"
        raise RecordError("missing_text_field",
                          f"no string field {'+'.join(fields)!r}; its fields: {found}")
    return "\n\n".join(value[name] for name in fields)


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


def parse_each(records: Iterable[Record], parse: Callable[[Record], T],
               problems: ReadProblems) -> Iterator[T]:
    """`parse` of each record; the ones it rejects with a `RecordError` are counted."""
    for record in records:
        try:
            yield parse(record)
        except RecordError as err:
            problems.add(err.reason, record.where, err.detail)


def collect(source: str, read: Callable[[ReadProblems], Iterable[T]], limit: int | None = None,
            problems: ReadProblems | None = None) -> list[T]:
    """The first `limit` items (all when None) that `read` gives from `source`, its problems
    added to `problems`; a `UserError` naming `source` when it gives none."""
    tally = ReadProblems()
    items = list(itertools.islice(read(tally), limit))
    if problems is not None:
        problems.update(tally.to_dict())
    if not items:
        raise tally.nothing_usable(source)
    return items


def load_jsonl(path: str | Path, parse: Callable[[Record], T], what: str, limit: int | None = None,
               problems: ReadProblems | None = None) -> list[T]:
    """`collect` over one JSONL file's records that `parse` accepts; `what` names the data in
    the message for a missing file."""
    if not storage.path(path).is_file():
        raise UserError(f"{what} {path} does not exist")
    return collect(str(path), lambda tally: parse_each(read_jsonl(path, tally), parse, tally),
                   limit, problems)


def open_tfds(name: str, split: str, data_dir: str | None = None,
              data_dir_option: str = "the TFDS data_dir") -> Any:
    """A prepared TFDS split, read by index through `tfds.data_source` (ArrayRecord); `name` may
    also be the directory of a prepared dataset (`llm-jax curate` writes one).

    Nothing is downloaded: a read must not start a download and preparation that can take hours
    and terabytes, that TPU workers without network cannot do, and that every host of a pod
    would start at once. Prepare a dataset once with `tfds build` and point `data_dir_option`
    (the caller's option for TFDS's data_dir) at it.
    """
    import tensorflow_datasets as tfds

    try:
        if Path(name).is_dir():
            return tfds.builder_from_directory(name).as_data_source(split=split)
        return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
    except Exception as err:  # TFDS raises many types for "not there"; all are the user's to fix
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip(".")
        raise UserError(
            f"cannot open TFDS data set '{name}' split '{split}': {first_line}. Prepare it "
            f"where there is network (tfds build {name} --file_format=array_record) and set "
            f"{data_dir_option} to its data_dir, or give the path of a prepared dataset directory"
        ) from None


def tfds_texts(source: Any, name: str, split: str, indices: Iterable[int], fields: Sequence[str],
               problems: ReadProblems) -> Iterator[tuple[str, str]]:
    """(`tfds:NAME:SPLIT:INDEX`, text) of the records at `indices` of an `open_tfds` split;
    records whose text fields are missing or not UTF-8 are counted."""
    for index in indices:
        problems.read += 1
        where = f"tfds:{name}:{split}:{index}"
        try:
            yield where, joined_text(_decoded(source[index], fields), fields)
        except RecordError as err:
            problems.add(err.reason, where, err.detail)


def _decoded(record: Any, fields: Sequence[str]) -> dict[str, Any]:
    """A TFDS record with its `fields` (bytes for Text features) decoded to strings."""
    values = dict(record) if isinstance(record, dict) else {}
    for name in fields:
        value = values.get(name)
        if isinstance(value, (bytes, bytearray)):
            try:
                values[name] = bytes(value).decode("utf-8")
            except UnicodeDecodeError as err:
                raise RecordError("invalid_utf8", f"field {name!r}, byte {err.start}") from None
    return values
