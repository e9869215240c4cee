"""Where raw text comes from, as a stream of documents that parallel readers can split between them.

`data.source` is one of:

    stdlib                the Python standard library's .py files and documentation (offline default)
    tfds:NAME             a prepared TFDS dataset by name (e.g. `tfds:c4/en`, `tfds:tiny_shakespeare`)
                          read through `tfds.data_source` (ArrayRecord), split `data.tfds_split`,
                          never downloaded (see `readers.open_tfds`); a path after `tfds:` opens a
                          prepared dataset directory instead
    jsonl:PATH_OR_GLOB    JSON Lines, optionally gzipped, text under `data.text_field`
    PATH, GLOB or DIR     text files; names ending in .jsonl, .jsonl.gz or .json.gz are read as JSONL

`data.text_field` may name several fields separated by commas (`question,answer`); their values
are joined with a blank line. Text files longer than `data.max_doc_chars` are cut at blank lines
into several documents, so one large file (a book, a corpus dump) still gives documents of a size
that quality filters and packing expect.

Bad input never stops a read (`llm_jax.data.readers` has the policy): undecodable bytes, lines
that are not JSON objects, records without the text field and damaged gzip streams are counted in
a `ReadProblems` tally with `file:line` examples, and the caller decides whether anything usable
remains. What can be checked before reading (missing files, an empty glob, an unprepared TFDS
dataset) raises `UserError` from `open_source`.
"""

from __future__ import annotations

import abc
import dataclasses
import glob
import itertools
import random
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

from llm_jax import storage
from llm_jax.data import stdlib_corpus
from llm_jax.data.readers import (
    ReadProblems, Record, bad_byte_line, joined_text, open_tfds, parse_each, read_jsonl, read_text,
    tfds_texts)
from llm_jax.errors import UserError

__all__ = ["FileSource", "RawDocument", "ReadProblems", "Source", "StdlibSource", "TfdsSource",
           "open_source", "split_text"]

CODE_SUFFIXES = frozenset(
    ".py .pyi .c .h .cc .cpp .hpp .java .js .ts .go .rs .rb .sh .jl .scala .kt .swift .lua .pl "
    ".sql .cs .php".split()
)
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")


@dataclasses.dataclass(frozen=True)
class RawDocument:
    """One document as read: `kind` ("prose" or "code") selects which curation steps apply."""

    id: str
    text: str
    kind: str


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


def _kind_of(path: str) -> str:
    return "code" if Path(path).suffix.lower() in CODE_SUFFIXES else "prose"


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
        text = read_text(path, problems)
        if text is not None:
            yield from _text_documents(path, path, text, _kind_of(path.removesuffix(".gz")),
                                       self.max_doc_chars, problems)

    def _read_jsonl(self, path: str, problems: ReadProblems) -> Iterator[RawDocument]:
        def document(record: Record) -> RawDocument:
            return RawDocument(record.where, joined_text(record.value, self.text_fields), "prose")

        return parse_each(read_jsonl(path, problems), document, problems)


def _text_documents(name: str, path: str, text: str, kind: str, max_doc_chars: int,
                    problems: ReadProblems) -> Iterator[RawDocument]:
    """The parts of a text file as documents `name:i`; a part with bytes that are not UTF-8
    is counted as `path:line` of the first one."""
    offset = 0
    for i, chunk in enumerate(split_text(text, max_doc_chars)):
        start, offset = offset, offset + len(chunk)
        problems.read += 1
        line = bad_byte_line(text, start, offset)
        if line is not None:
            problems.add("invalid_utf8", f"{path}:{line}", f"part {i} of the file")
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
        text = read_text(unit, problems)
        if text is None:
            return
        name = f"stdlib:{relative}"
        yield from _text_documents(name, unit, text, "code", self.max_doc_chars, problems)
        if bad_byte_line(text) is None:
            module = relative.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
            docs = stdlib_corpus.module_docstrings(text, module)
            yield from _text_documents(f"{name}#docstrings", unit, docs, "prose",
                                       self.max_doc_chars, problems)


class TfdsSource(Source):
    """A prepared TFDS dataset read by index through `tfds.data_source` (random access over
    ArrayRecord); opened by `readers.open_tfds`, which never downloads."""

    def __init__(self, name: str, split: str, data_dir: str, text_fields: list[str]) -> None:
        self.spec = f"tfds:{name}"
        self.name = name
        self.split = split
        self.data_dir = data_dir
        self.text_fields = text_fields

    def open(self) -> Any:
        return open_tfds(self.name, self.split, self.data_dir, "data.tfds_data_dir")

    def units(self) -> list[Any]:
        return [None]

    def read_unit(self, unit: Any, problems: ReadProblems) -> Iterator[RawDocument]:
        source = self.open()
        return self._read_indices(source, range(len(source)), problems)

    def read(self, rank: int = 0, world_size: int = 1, problems: ReadProblems | None = None,
             max_documents: int = 0) -> Iterator[RawDocument]:
        problems = problems if problems is not None else ReadProblems()
        source = self.open()
        size = min(len(source), max_documents) if max_documents else len(source)
        return self._read_indices(source, range(rank, size, world_size), problems)

    def _read_indices(self, source: Any, indices: Iterable[int],
                      problems: ReadProblems) -> Iterator[RawDocument]:
        for where, text in tfds_texts(source, self.name, self.split, indices, self.text_fields,
                                      problems):
            if text.strip():
                yield RawDocument(where, text, "prose")


def _expand(pattern: str) -> list[str]:
    """The files of a path, glob or directory, local or `gs://` (hidden ones left out)."""
    expanded = pattern if storage.is_remote(pattern) else str(Path(pattern).expanduser())
    if glob.has_magic(expanded):
        paths = storage.glob(expanded)
        if not paths:
            raise UserError(f"data.source: the pattern {pattern!r} matches no files")
        return paths
    path = storage.path(expanded)
    if path.is_dir():
        paths = [str(p) for p in storage.files_under(path)
                 if not any(part.startswith(".") for part in p.relative_to(path).parts)]
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
        source.open()
        return source
    if spec.startswith("jsonl:"):
        pattern = spec[len("jsonl:"):]
        return FileSource(spec, _expand(pattern), fields, data.max_doc_chars, force_jsonl=True)
    return FileSource(spec, _expand(spec), fields, data.max_doc_chars)
