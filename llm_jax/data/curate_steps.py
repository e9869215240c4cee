"""datatrove pipeline steps of our own: the glue between our sources, datatrove's filters and
dedup stages, and our corpus format. Each is small; the filtering itself is datatrove's.

- `SourceReader`: documents from a `sources.Source`, tallying bad input instead of failing.
- `Tally`: counts documents and UTF-8 bytes flowing past it; the report is built from these.
- `KindFilter` / `KindFormatter`: apply a datatrove filter or formatter only to documents of the
  kinds it suits (a code corpus skips prose heuristics) and pass the rest through untouched; a
  filter also counts what it alone removes (documents every later quality step would keep).
- `SampleWriter`: keeps the first few rejected documents of a step for a person to read.
- `RankFileReader`: reads back this rank's intermediate JSONL file from an earlier stage, keeping
  document order (and so datatrove's dedup document indices) aligned between stages.
- `CorpusWriter`: writes this rank's output shard of the curated corpus.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Iterable, Sequence

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter, get_filter_result
from datatrove.pipeline.formatters.base import BaseFormatter
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.typeshelper import StatHints

from llm_jax.data import corpus
from llm_jax.data.sources import ReadProblems, Source


class SourceReader(PipelineStep):
    type = "📖 - READER"

    def __init__(self, source: Source, problems_dir: str, max_documents: int = 0) -> None:
        self.name = f"source {source.spec}"
        super().__init__()
        self.source = source
        self.problems_dir = problems_dir
        self.max_documents = max_documents

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        problems = ReadProblems()
        for raw in self.source.read(rank, world_size, problems, self.max_documents):
            self.stat_update(StatHints.total)
            yield Document(text=raw.text, id=raw.id, metadata={"kind": raw.kind})
        for name, count in problems.counts.items():
            self.stat_update(name, value=count)
        path = Path(self.problems_dir) / f"{rank:05d}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(problems.to_dict()))


class Tally(PipelineStep):
    type = "🔢 - TALLY"

    def __init__(self, label: str) -> None:
        self.name = label
        super().__init__()

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            self.stat_update("documents")
            self.stat_update("bytes", value=len(doc.text.encode("utf-8")))
            yield doc


class KindFilter(BaseFilter):
    """`inner`'s keep/drop decision for documents whose kind is in `kinds`; others are kept.

    A document it drops that every filter of `later` (the quality steps after it) would keep is
    counted as `removed_only_here`, with its bytes: text that looks clean to every other rule,
    which is where a rule too strict for a source shows in the report."""

    def __init__(self, label: str, inner: BaseFilter, kinds: Iterable[str], exclusion_writer=None,
                 later: Sequence[KindFilter] = ()) -> None:
        self.name = label
        super().__init__(exclusion_writer=exclusion_writer, batch_size=inner.batch_size)
        self.inner = inner
        self.kinds = frozenset(kinds)
        self.later = list(later)

    def kept_by_later(self, doc: Document) -> bool:
        """Whether `doc` would pass every later step (run in order on a copy, as C4 edits text)."""
        candidate = copy.deepcopy(doc)
        return all(get_filter_result(step.filter(candidate))[0] for step in self.later)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self.filter_batch([doc])[0]

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        results: list[bool | tuple[bool, str]] = [True] * len(batch)
        chosen = [i for i, doc in enumerate(batch) if doc.metadata.get("kind") in self.kinds]
        if chosen:
            decisions = self.inner.filter_batch([batch[i] for i in chosen])
            for i, decision in zip(chosen, decisions):
                results[i] = decision
                if not get_filter_result(decision)[0] and self.kept_by_later(batch[i]):
                    self.stat_update("removed_only_here")
                    self.stat_update("removed_only_here_bytes", value=len(batch[i].text.encode("utf-8")))
        self.stat_update("other_kind", value=len(batch) - len(chosen))
        return results

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        self.stat_update("removed_only_here", "removed_only_here_bytes", value=0)  # in the report even when 0
        yield from super().run(data, rank, world_size)
        for key, value in self.inner.stats.stats.items():  # e.g. C4's per-line counts
            self.stats[key] = self.stats[key] + value


class KindFormatter(PipelineStep):
    """`inner.format` on the text of documents whose kind is in `kinds`."""

    type = BaseFormatter.type

    def __init__(self, label: str, inner: BaseFormatter, kinds: Iterable[str]) -> None:
        self.name = label
        super().__init__()
        self.inner = inner
        self.kinds = frozenset(kinds)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            self.stat_update(StatHints.total)
            if doc.metadata.get("kind") in self.kinds:
                with self.track_time():
                    formatted = self.inner.format(doc.text)
                if formatted != doc.text:
                    self.stat_update("changed")
                    doc.text = formatted
            yield doc


class SampleWriter(JsonlWriter):
    """A JSONL writer that stops after `limit` documents per rank: a sample, not an archive."""

    def __init__(self, output_folder: str, limit: int) -> None:
        super().__init__(output_folder, output_filename="${rank}.jsonl", compression=None)
        self.limit = limit
        self.written = 0

    def write(self, document: Document, rank: int = 0, **kwargs) -> None:
        if self.written < self.limit:
            self.written += 1
            super().write(document, rank, **kwargs)


def intermediate_writer(folder: str) -> JsonlWriter:
    """Writer for the documents handed from one stage to the next (one file per rank)."""
    return JsonlWriter(folder, output_filename="${rank}.jsonl", compression=None)


class RankFileReader(PipelineStep):
    type = "📖 - READER"

    def __init__(self, folder: str) -> None:
        self.name = "previous stage"
        super().__init__()
        self.reader = JsonlReader(folder, compression=None)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        name = f"{rank:05d}.jsonl"
        if self.reader.data_folder.exists(name):
            for doc in self.reader.read_file(name):
                self.stat_update(StatHints.total)
                yield doc


class CorpusWriter(PipelineStep):
    type = "💽 - WRITER"

    def __init__(self, directory: str) -> None:
        self.name = "ArrayRecord corpus shard"
        super().__init__()
        self.directory = directory

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        def records() -> Iterable[bytes]:
            for doc in data:
                self.stat_update("documents")
                self.stat_update("bytes", value=len(doc.text.encode("utf-8")))
                yield corpus.encode_record(doc.text, doc.id, doc.metadata.get("kind", "prose"))

        Path(self.directory).mkdir(parents=True, exist_ok=True)
        with self.track_time():
            corpus.write_shard(Path(self.directory) / corpus.shard_name(rank, world_size), records())
        yield from ()
