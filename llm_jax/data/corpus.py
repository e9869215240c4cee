"""The curated corpus on disk: a TFDS dataset directory of ArrayRecord shards.

Each record is a serialized `tf.train.Example` with the features `text`, `id` and `kind`, written
by TFDS's own serializer, and the directory carries TFDS metadata (`dataset_info.json`,
`features.json`), so the same files open three ways:

    tfds.builder_from_directory(DIR).as_data_source("train")      # TFDS
    grain.sources.ArrayRecordDataSource(shard_paths(DIR))         # grain, records still encoded
    CorpusSource(DIR)                                             # grain-ready, decoded to str

`dataset_info.json` is written last, after every shard is in place: a directory without it is an
unfinished run and `CorpusSource` refuses it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import tempfile
from typing import Any, Sequence

from llm_jax import storage
from llm_jax.errors import UserError

DATASET_NAME = "curated"
SPLIT = "train"
FILENAME_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
INFO_FILE = "dataset_info.json"
SETTINGS_VERSION = 1


class RecordCodec:
    """The corpus features with TFDS's serializer and NumPy parser for them, built in full.

    TFDS builds its parts on first use (lazy modules resolved through `functools.cached_property`,
    imports inside them). Done for the first time by several grain reader threads at once, that
    deadlocks on Python's import locks, so a codec is made whole in one thread before any reader
    starts: one round trip of a record runs every first-use path.
    """

    def __init__(self) -> None:
        import tensorflow_datasets as tfds
        from tensorflow_datasets.core import example_parser, example_serializer

        text = tfds.features.Text()
        self.features = tfds.features.FeaturesDict(
            {"text": text, "id": tfds.features.Text(), "kind": text})
        info = self.features.get_serialized_info()
        self._serializer = example_serializer.ExampleSerializer(info)
        self._parser = example_parser.ExampleParserNp(info)
        self.decode(self.encode("", "", ""))

    def encode(self, text: str, doc_id: str, kind: str) -> bytes:
        return self._serializer.serialize_example(
            self.features.encode_example({"text": text, "id": doc_id, "kind": kind}))

    def decode(self, record: bytes) -> dict[str, str]:
        example = self.features.decode_example_np(self._parser.parse_example(record))
        return {key: value.decode("utf-8") for key, value in example.items()}


@functools.lru_cache(maxsize=1)
def codec() -> RecordCodec:
    """This process' codec, made by the first caller: the thread that opens a corpus."""
    return RecordCodec()


def curation_settings(config: Any) -> dict[str, Any]:
    """Every setting that shapes a curated corpus (not how many workers make it, or where)."""
    d = config.data
    curate = dataclasses.asdict(config.curate)
    for how in ("workers", "executor", "cpus_per_task", "slurm_partition", "slurm_time"):
        curate.pop(how, None)
    return {"version": SETTINGS_VERSION, "source": d.source, "text_field": d.text_field,
            "max_doc_chars": d.max_doc_chars, "tfds_split": d.tfds_split,
            "tfds_data_dir": d.tfds_data_dir, "curate": curate}


def settings_hash(settings: Any) -> str:
    """12 hex digits of the SHA-256 of `settings` as sorted JSON: a name's version part."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


# How a corpus is split into tasks and how much of what it removed is kept for a person: the
# corpus's name leaves them out, so that the runs reading a corpus need not repeat them (curate
# itself still refuses to resume a corpus made with other values).
NOT_IN_NAME = ("tasks", "rejected_samples")


def source_slug(text: str) -> str:
    """`text` with each run of characters other than letters, digits and dots made one `-`,
    and `-` and `.` trimmed from its ends: a source spec as a name safe in paths and metric
    keys (callers cut it to their length)."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-.")


def corpus_name(config: Any) -> str:
    """`<source>-<hash of the curation settings>`, e.g. `tfds-c4-en-1f3a...`: the runs and
    experiment arms with the same data settings name the same corpus, and any change of them
    names another one, so a prepared corpus is never curated twice nor silently replaced."""
    slug = source_slug(config.data.source)[:48] or "corpus"
    settings = curation_settings(config)
    for how in NOT_IN_NAME:
        settings["curate"].pop(how)
    return f"{slug}-{settings_hash(settings)}"


def curated_dir(config: Any) -> storage.AnyPath:
    """`data.curated_dir`; else `<data.corpora>/<corpus_name>`, the shared prepared corpus;
    else `<run_dir>/curated` (any of them may be `gs://`)."""
    if config.data.curated_dir:
        return storage.path(config.data.curated_dir)
    if config.data.corpora:
        return storage.path(config.data.corpora) / corpus_name(config)
    return storage.path(config.run_dir) / "curated"


def encode_record(text: str, doc_id: str, kind: str) -> bytes:
    """One document as the bytes of a serialized tf.train.Example."""
    return codec().encode(text, doc_id, kind)


def decode_record(record: bytes) -> dict[str, str]:
    """The inverse of `encode_record`."""
    return codec().decode(record)


def shard_name(index: int, count: int) -> str:
    return f"{DATASET_NAME}-{SPLIT}.array_record-{index:05d}-of-{count:05d}"


def write_shard(path: storage.PathLike, records: Sequence[bytes] | Any) -> int:
    """Writes records to `path` (local or `gs://`) through a temporary local file, so a crash
    never leaves a shard that looks whole. Returns the number of records."""
    from array_record.python.array_record_module import ArrayRecordWriter

    path = storage.path(path)
    local = None if storage.is_remote(path) else path.parent
    tmp = tempfile.NamedTemporaryFile(dir=local, prefix=f".{path.name}.", delete=False).name
    writer = ArrayRecordWriter(tmp, "group_size:1")
    count = 0
    try:
        for record in records:
            writer.write(record)
            count += 1
    finally:
        writer.close()
    storage.put_file(tmp, path)
    return count


def write_metadata(directory: storage.PathLike, shard_lengths: list[int], num_bytes: int) -> None:
    """Marks the corpus complete by writing TFDS metadata for its shards."""
    import tensorflow_datasets as tfds

    split = tfds.core.SplitInfo(name=SPLIT, shard_lengths=list(shard_lengths), num_bytes=num_bytes,
                                filename_template=None)
    tfds.folder_dataset.write_metadata(
        data_dir=str(directory), features=codec().features, split_infos=[split],
        filename_template=FILENAME_TEMPLATE, check_data=False,
        description="Curated by llm-jax curate; see report.json.",
    )


def is_complete(directory: storage.PathLike) -> bool:
    return (storage.path(directory) / INFO_FILE).is_file()


def shard_paths(directory: storage.PathLike) -> list[str]:
    """The local shard files of a complete corpus, in order (ArrayRecord reads local files: a
    `gs://` corpus is read from its local copy, made once per host)."""
    directory = storage.path(directory)
    if not is_complete(directory):
        raise UserError(
            f"no complete curated corpus in {directory}: run `llm-jax curate` (with the same "
            "--config) first, or point data.curated_dir at one"
        )
    shards = sorted(directory.glob(f"{DATASET_NAME}-{SPLIT}.array_record-*-of-*"))
    return [str(storage.local_copy(shard)) for shard in shards]


class CorpusSource:
    """Random access to a curated corpus' texts: a grain data source (len, getitem, picklable).

    The shards and the codec are opened when the source is made or unpickled, in the thread that
    builds the pipeline (a grain worker process unpickles in its main thread), so that grain's
    reader threads only read.
    """

    def __init__(self, directory: storage.PathLike) -> None:
        self.directory = str(directory)
        self.paths = shard_paths(directory)
        self._open()

    def _open(self) -> None:
        import grain

        self._records = grain.sources.ArrayRecordDataSource(self.paths) if self.paths else None
        self._codec = codec()

    def __len__(self) -> int:
        return len(self._records) if self._records is not None else 0

    def __getitem__(self, index: int) -> str:
        return self._codec.decode(self._records[index])["text"]

    def __getstate__(self) -> dict[str, Any]:
        return {"directory": self.directory, "paths": self.paths}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open()

    def __repr__(self) -> str:
        return f"CorpusSource({self.directory!r}, shards={len(self.paths)})"
