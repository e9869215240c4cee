"""Where raw text comes from, as a stream of documents that parallel readers can split between them.

`data.source` is one of:

    stdlib                the Python standard library's .py files and documentation (offline default)
    tfds:NAME             a TFDS dataset by name (e.g. `tfds:c4/en`, `tfds:tiny_shakespeare`) read
                          through `tfds.data_source` (ArrayRecord), split `data.tfds_split`; a path
                          after `tfds:` opens a prepared dataset directory instead
    jsonl:PATH_OR_GLOB    JSON Lines, optionally gzipped, text under `data.text_field`
    PATH, GLOB or DIR     text files; names ending in .jsonl, .jsonl.gz or .json.gz are read as JSONL

`data.text_field` may name several fields separated by commas (`question,answer`); their values
are joined with a blank line. Text files longer than `data.max_doc_chars` are cut at blank lines
into several documents, so one large file (a book, a corpus dump) still gives documents of a size
that quality filters and packing expect.

Bad input never stops a read: undecodable bytes, malformed JSON lines, records without the text
field and corrupt gzip streams are counted in a `ReadProblems` tally with a few examples, and the
caller decides whether anything usable remains. What can be checked before reading (missing files,
an empty glob, an unprepared TFDS dataset) raises `UserError` from `open_source`.
"""

from __future__ import annotations

import abc
import dataclasses
import glob
import gzip
import itertools
import json
import random
import re
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator

from llm_jax.data import stdlib_corpus
from llm_jax.errors import UserError

CODE_SUFFIXES = frozenset(
    ".py .pyi .c .h .cc .cpp .hpp .java .js .ts .go .rs .rb .sh .jl .scala .kt .swift .lua .pl "
    ".sql .cs .php".split()
)
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")
_UNDECODED = re.compile("[\udc80-\udcff]")  # bytes kept by errors="surrogateescape"
_MAX_EXAMPLES = 20


@dataclasses.dataclass(frozen=True)
class RawDocument:
    """One document as read: `kind` ("prose" or "code") selects which curation steps apply."""

    id: str
    text: str
    kind: str


class ReadProblems:
    """Counts of input that could not be used, and a few examples a person can look up."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: list[str] = []

    def add(self, problem: str, where: str) -> None:
        self.counts[problem] += 1
        if len(self.examples) < _MAX_EXAMPLES:
            self.examples.append(f"{problem}: {where}")

    def update(self, other: dict[str, Any]) -> None:
        """Adds a tally saved by `to_dict` (one per parallel reader)."""
        self.counts.update(other.get("counts", {}))
        room = _MAX_EXAMPLES - len(self.examples)
        self.examples.extend(other.get("examples", [])[:room])

    def to_dict(self) -> dict[str, Any]:
        return {"counts": dict(sorted(self.counts.items())), "examples": list(self.examples)}

    def summary(self) -> str:
        return ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in sorted(self.counts.items()))


def split_text(text: str, max_chars: int) -> list[str]:
    """Cuts text into pieces of at most `max_chars`, at blank lines where possible, losing nothing.

    `"".join(split_text(t, n)) == t`; a paragraph longer than `max_chars` is cut at line ends, and a
    line longer than that at `max_chars`.
    """
    if max_chars <= 0 or len(text) <= max_chars:
        return [text]
    blocks: list[str] = []
    for paragraph in re.findall(r".*?(?:\n[ \t]*\n\s*|\Z)", text, flags=re.S):
        if len(paragraph) <= max_chars:
            blocks.append(paragraph)
            continue
        for line in paragraph.splitlines(keepends=True):
            blocks.extend(line[i : i + max_chars] for i in range(0, len(line), max_chars))
    chunks, current = [], ""
    for block in blocks:
        if current and len(current) + len(block) > max_chars:
            chunks.append(current)
            current = ""
        current += block
    if current:
        chunks.append(current)
    return chunks


def _decode(raw: bytes) -> tuple[str, int]:
    """UTF-8 text, with undecodable bytes kept as surrogates; also the offset of the first bad byte."""
    try:
        return raw.decode("utf-8"), -1
    except UnicodeDecodeError as err:
        return raw.decode("utf-8", errors="surrogateescape"), err.start


def _kind_of(path: str) -> str:
    return "code" if Path(path).suffix.lower() in CODE_SUFFIXES else "prose"


def _join_fields(record: Any, fields: list[str]) -> str | None:
    if not isinstance(record, dict):
        return None
    values = [record.get(name) for name in fields]
    if any(not isinstance(v, str) for v in values):
        return None
    return "\n\n".join(values)


class Source(abc.ABC):
    """A corpus that parallel readers split by rank; every rank sees a deterministic share."""

    spec: str

    @abc.abstractmethod
    def units(self) -> list[Any]:
        """Independently readable pieces (files, usually) in a fixed order."""

    @abc.abstractmethod
    def read_unit(self, unit: Any, problems: ReadProblems) -> Iterator[RawDocument]:
        """The documents of one unit."""

    def read(
        self, rank: int = 0, world_size: int = 1, problems: ReadProblems | None = None,
        max_documents: int = 0,
    ) -> Iterator[RawDocument]:
        """This rank's documents; at most about `max_documents` over all ranks (0: no limit).

        With at least as many units as ranks each rank reads whole units; otherwise every rank
        reads all of them and keeps every `world_size`-th document (only rank 0 tallies problems,
        so that they are counted once).
        """
        problems = problems if problems is not None else ReadProblems()
        units = self.units()
        if len(units) >= world_size:
            docs: Iterable[RawDocument] = itertools.chain.from_iterable(
                self.read_unit(u, problems) for u in units[rank::world_size]
            )
        else:
            tally = problems if rank == 0 else ReadProblems()
            every = itertools.chain.from_iterable(self.read_unit(u, tally) for u in units)
            docs = (d for i, d in enumerate(every) if i % world_size == rank)
        docs = (d for d in docs if d.text.strip())
        if max_documents:
            share = max_documents // world_size + (rank < max_documents % world_size)
            docs = itertools.islice(docs, share)
        return iter(docs)

    def read_all(self, max_documents: int = 0) -> tuple[list[RawDocument], ReadProblems]:
        """Every document in order, with the problems met; for small corpora and tests."""
        problems = ReadProblems()
        return list(self.read(0, 1, problems, max_documents)), problems


class FileSource(Source):
    """Text and JSONL files. Files are shuffled with a fixed seed so that a capped read samples
    the whole corpus rather than the first names in alphabetical order."""

    def __init__(self, spec: str, paths: list[str], text_fields: list[str], max_doc_chars: int,
                 force_jsonl: bool = False) -> None:
        self.spec = spec
        self.paths = list(paths)
        random.Random(0).shuffle(self.paths)
        self.text_fields = text_fields
        self.max_doc_chars = max_doc_chars
        self.force_jsonl = force_jsonl

    def units(self) -> list[str]:
        return self.paths

    def read_unit(self, unit: str, problems: ReadProblems) -> Iterator[RawDocument]:
        if self.force_jsonl or unit.lower().endswith(JSONL_SUFFIXES):
            return self._read_jsonl(unit, problems)
        return self._read_text(unit, problems)

    def _read_text(self, path: str, problems: ReadProblems) -> Iterator[RawDocument]:
        try:
            raw = gzip.decompress(Path(path).read_bytes()) if path.endswith(".gz") else Path(path).read_bytes()
        except (OSError, EOFError, zlib.error) as err:
            problems.add("unreadable_file", f"{path} ({err})")
            return
        text, bad_at = _decode(raw)
        yield from _text_documents(path, text.removeprefix("\ufeff"), bad_at, _kind_of(path.removesuffix(".gz")),
                                   self.max_doc_chars, problems)

    def _read_jsonl(self, path: str, problems: ReadProblems) -> Iterator[RawDocument]:
        opener = gzip.open if path.endswith(".gz") else open
        line_no = 0
        try:
            with opener(path, "rb") as handle:
                for line_no, raw in enumerate(handle, start=1):
                    if not raw.strip():
                        continue
                    text, bad_at = _decode(raw)
                    if bad_at >= 0:
                        problems.add("invalid_utf8", f"{path}:{line_no} (byte {bad_at} of the line)")
                        continue
                    try:
                        record = json.loads(text)
                    except json.JSONDecodeError as err:
                        problems.add("malformed_json", f"{path}:{line_no} ({err.msg})")
                        continue
                    value = _join_fields(record, self.text_fields)
                    if value is None:
                        keys = ", ".join(record) if isinstance(record, dict) else type(record).__name__
                        problems.add("missing_text_field",
                                     f"{path}:{line_no} has no string field "
                                     f"{'+'.join(self.text_fields)!r} (found: {keys})")
                        continue
                    yield RawDocument(f"{path}:{line_no}", value, "prose")
        except (OSError, EOFError, zlib.error) as err:
            problems.add("corrupt_file", f"{path} after line {line_no} ({err})")


def _text_documents(name: str, text: str, bad_at: int, kind: str, max_doc_chars: int,
                    problems: ReadProblems) -> Iterator[RawDocument]:
    for i, chunk in enumerate(split_text(text, max_doc_chars)):
        if _UNDECODED.search(chunk):
            problems.add("invalid_utf8", f"{name} part {i} (first bad byte at offset {bad_at})")
            continue
        chunk = chunk.strip("\n")
        if chunk.strip():
            yield RawDocument(f"{name}:{i}", chunk, kind)


class StdlibSource(Source):
    """The standard library corpus (see `stdlib_corpus`): each .py file gives its code (kind
    "code") and its gathered docstrings (kind "prose"); the reference topics form one more unit."""

    TOPICS = "<pydoc topics>"

    def __init__(self, max_doc_chars: int) -> None:
        self.spec = "stdlib"
        self.root = str(stdlib_corpus.stdlib_root())
        self.files = [str(p) for p in stdlib_corpus.stdlib_source_files()]
        random.Random(0).shuffle(self.files)
        self.max_doc_chars = max_doc_chars

    def units(self) -> list[str]:
        return [self.TOPICS, *self.files]

    def read_unit(self, unit: str, problems: ReadProblems) -> Iterator[RawDocument]:
        if unit == self.TOPICS:
            for topic, text in stdlib_corpus.reference_topics():
                yield RawDocument(f"stdlib:topics/{topic}", text, "prose")
            return
        relative = str(Path(unit).relative_to(self.root))
        try:
            raw = Path(unit).read_bytes()
        except OSError as err:
            problems.add("unreadable_file", f"{unit} ({err})")
            return
        text, bad_at = _decode(raw)
        name = f"stdlib:{relative}"
        yield from _text_documents(name, text, bad_at, "code", self.max_doc_chars, problems)
        if bad_at < 0:
            module = relative.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
            docs = stdlib_corpus.module_docstrings(text, module)
            yield from _text_documents(f"{name}#docstrings", docs, -1, "prose", self.max_doc_chars,
                                       problems)


class TfdsSource(Source):
    """A TFDS dataset read by index through `tfds.data_source` (random access over ArrayRecord)."""

    def __init__(self, name: str, split: str, data_dir: str, text_fields: list[str]) -> None:
        self.spec = f"tfds:{name}"
        self.name = name
        self.split = split
        self.data_dir = data_dir
        self.text_fields = text_fields

    def open(self, download: bool = False) -> Any:
        import tensorflow_datasets as tfds

        try:
            if Path(self.name).is_dir():
                return tfds.builder_from_directory(self.name).as_data_source(split=self.split)
            return tfds.data_source(self.name, split=self.split, data_dir=self.data_dir or None,
                                    download=download)
        except Exception as err:  # tfds raises many types for "not there"; all are the user's to fix
            raise UserError(
                f"cannot open TFDS dataset '{self.name}' split '{self.split}': {err}\n"
                "Prepare it in ArrayRecord format on a machine with network access "
                f"(tfds build {self.name} --file_format=array_record) and point data.tfds_data_dir "
                "at its data_dir, or give tfds:<path to a prepared dataset directory>."
            ) from None

    def units(self) -> list[Any]:
        return [None]

    def read_unit(self, unit: Any, problems: ReadProblems) -> Iterator[RawDocument]:
        return self._read_indices(range(len(self.open())), problems)

    def read(self, rank: int = 0, world_size: int = 1, problems: ReadProblems | None = None,
             max_documents: int = 0) -> Iterator[RawDocument]:
        problems = problems if problems is not None else ReadProblems()
        size = len(self.open())
        if max_documents:
            size = min(size, max_documents)
        return self._read_indices(range(rank, size, world_size), problems)

    def _read_indices(self, indices: Iterable[int], problems: ReadProblems) -> Iterator[RawDocument]:
        source = self.open()
        for index in indices:
            record = source[index]
            values = {}
            for name in self.text_fields:
                value = record.get(name) if isinstance(record, dict) else None
                if isinstance(value, (bytes, bytearray)):
                    text, bad_at = _decode(bytes(value))
                    value = None if bad_at >= 0 else text
                values[name] = value
            text = _join_fields(values, self.text_fields)
            if text is None:
                problems.add("missing_text_field", f"{self.spec}[{self.split}][{index}]")
                continue
            if text.strip():
                yield RawDocument(f"{self.spec}:{self.split}:{index}", text, "prose")


def _expand(pattern: str) -> list[str]:
    expanded = str(Path(pattern).expanduser())
    if glob.has_magic(expanded):
        paths = sorted(p for p in glob.glob(expanded, recursive=True) if Path(p).is_file())
        if not paths:
            raise UserError(f"data.source: the pattern {pattern!r} matches no files")
        return paths
    path = Path(expanded)
    if path.is_dir():
        paths = sorted(str(p) for p in path.rglob("*")
                       if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not paths:
            raise UserError(f"data.source: the directory {pattern} holds no files")
        return paths
    if not path.exists():
        raise UserError(f"data.source: {pattern} does not exist")
    if not path.is_file():
        raise UserError(f"data.source: {pattern} is not a regular file")
    return [str(path)]


def open_source(data: Any) -> Source:
    """The `Source` that `data.source` (a `DataConfig`) names; raises `UserError` for what is
    missing before any reading starts."""
    spec = data.source.strip()
    fields = [f.strip() for f in data.text_field.split(",") if f.strip()]
    if not fields:
        raise UserError("data.text_field is empty; name the JSON field that holds the text")
    if not spec:
        raise UserError("data.source is empty; give a path, a glob, jsonl:PATH, tfds:NAME or stdlib")
    if spec == "stdlib":
        return StdlibSource(data.max_doc_chars)
    if spec.startswith("tfds:"):
        source = TfdsSource(spec[len("tfds:"):], data.tfds_split, data.tfds_data_dir, fields)
        source.open(download=True)
        return source
    if spec.startswith("jsonl:"):
        pattern = spec[len("jsonl:"):]
        return FileSource(spec, _expand(pattern), fields, data.max_doc_chars, force_jsonl=True)
    return FileSource(spec, _expand(spec), fields, data.max_doc_chars)
