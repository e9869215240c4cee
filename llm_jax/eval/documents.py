"""Documents to measure perplexity on: text files, JSONL files or TFDS splits.

- a path or glob of text files: each file is one document (long ones are scored in windows);
- `jsonl:PATH` or a `.jsonl` / `.jsonl.gz` path: one document per line, from its text field;
- `tfds:NAME` or `tfds:NAME:SPLIT` (default split `test`): a TFDS data set prepared beforehand
  (`readers.open_tfds`: nothing is downloaded).

Input is read under `llm_jax.data.readers`' policy: a text file that is not UTF-8, a JSONL line
that is not a JSON object with the text field, a damaged gzip stream are skipped and counted, and
a source with nothing usable is an error that names it.
"""

from __future__ import annotations

import glob
from typing import Iterator

from llm_jax import storage
from llm_jax.data.readers import (
    ReadProblems, bad_byte_line, collect, joined_text, open_tfds, parse_each, read_jsonl,
    read_text, tfds_texts)
from llm_jax.errors import UserError

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")


def _text_document(path: str, problems: ReadProblems) -> str | None:
    """A whole text file, or None (counted) when it cannot be read or is not all UTF-8."""
    text = read_text(path, problems)
    if text is None:
        return None
    problems.read += 1
    line = bad_byte_line(text)
    if line is not None:
        problems.add("invalid_utf8", f"{path}:{line}", "a document must be UTF-8 throughout")
        return None
    return text


def _file_documents(paths: list[str], jsonl: bool, field: str,
                    problems: ReadProblems) -> Iterator[str]:
    for path in paths:
        if jsonl or path.endswith(JSONL_SUFFIXES):
            yield from parse_each(read_jsonl(path, problems),
                                  lambda record: joined_text(record.value, [field]), problems)
        else:
            text = _text_document(path, problems)
            if text is not None:
                yield text


def read_documents(spec: str, text_field: str = "text", tfds_data_dir: str | None = None,
                   limit: int | None = None, problems: ReadProblems | None = None) -> list[str]:
    """The documents named by `spec`, at most `limit` of them; what was skipped is added to
    `problems`, and a `UserError` names `spec` when nothing usable is left."""
    if spec.startswith("tfds:"):
        name, _, split = spec[len("tfds:"):].partition(":")
        split = split or "test"
        source = open_tfds(name, split, tfds_data_dir, "--tfds-data-dir")

        def texts(tally: ReadProblems) -> Iterator[str]:
            for _, text in tfds_texts(source, name, split, range(len(source)), [text_field], tally):
                yield text

        return collect(spec, texts, limit, problems)
    pattern = spec[len("jsonl:"):] if spec.startswith("jsonl:") else spec
    if glob.has_magic(pattern):
        paths = storage.glob(pattern)
    else:
        paths = [pattern] if storage.path(pattern).is_file() else []
    if not paths:
        raise UserError(f"no file matches {pattern}")
    return collect(spec, lambda tally: _file_documents(paths, spec.startswith("jsonl:"), text_field,
                                                       tally), limit, problems)
