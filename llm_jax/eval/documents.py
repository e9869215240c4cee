"""Documents to measure perplexity on: text files, JSONL files or TFDS splits.

- a path or glob of text files: each file is one document (long ones are scored in windows);
- `jsonl:PATH` or a `.jsonl` / `.jsonl.gz` path: one document per line, from its text field;
- `tfds:NAME` or `tfds:NAME:SPLIT` (default split `test`): read with `tfds.data_source`, which
  needs the data set prepared in TFDS's data directory beforehand (nothing is downloaded).
"""

from __future__ import annotations

import glob
import gzip
import json
from pathlib import Path
from typing import Iterator

from llm_jax.errors import UserError


def _jsonl_texts(path: Path, field: str) -> Iterator[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            if field not in record:
                raise UserError(f"{path}:{line_no} has no field '{field}' "
                                f"(fields: {', '.join(record)}); set --text-field")
            yield record[field]


def _tfds_texts(spec: str, field: str, data_dir: str | None) -> Iterator[str]:
    import tensorflow_datasets as tfds

    name, _, split = spec.partition(":")
    try:
        source = tfds.data_source(name, split=split or "test", data_dir=data_dir,
                                  download=False)
    except Exception as err:  # TFDS raises several types for a missing or unprepared set
        raise UserError(f"cannot open TFDS data set '{name}' split '{split or 'test'}': {err}. "
                        "Prepare it first (tfds build) or pass --tfds-data-dir") from None
    for record in source:
        value = record[field]
        yield value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_documents(spec: str, text_field: str = "text", tfds_data_dir: str | None = None,
                   limit: int | None = None) -> list[str]:
    """The documents named by `spec`, at most `limit` of them."""
    if spec.startswith("tfds:"):
        texts: Iterator[str] = _tfds_texts(spec[len("tfds:"):], text_field, tfds_data_dir)
    else:
        pattern = spec[len("jsonl:"):] if spec.startswith("jsonl:") else spec
        paths = sorted(Path(p) for p in glob.glob(pattern))
        if not paths:
            raise UserError(f"no file matches {pattern}")
        is_jsonl = spec.startswith("jsonl:")

        def generate() -> Iterator[str]:
            for path in paths:
                if is_jsonl or path.name.endswith((".jsonl", ".jsonl.gz")):
                    yield from _jsonl_texts(path, text_field)
                else:
                    yield path.read_text(encoding="utf-8")

        texts = generate()
    documents = []
    for text in texts:
        if limit is not None and len(documents) >= limit:
            break
        documents.append(text)
    return documents
