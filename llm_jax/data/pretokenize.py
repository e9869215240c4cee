"""Pre-tokenized corpus: the curated documents' token ids in ArrayRecord shards, for large runs.

Encoding text on the fly costs CPU on every host at every epoch; `llm-jax tokenizer --pretokenize`
encodes the corpus once. Record i holds the ids of curated document i (int32, little-endian,
without bos/eos), so the input pipeline makes the same split and the same batches from either.
`meta.json` is written last and names the corpus and tokenizer it was made from; the pipeline
refuses shards made from another one.

Layout of `data.tokens_dir` (default `<run_dir>/tokens`, or `<corpus>/tokens-<tokenizer>` beside a
shared corpus, `data.corpora`):

    tokens.array_record-0000k-of-0000n
    meta.json
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Iterator

import numpy as np

from llm_jax import storage
from llm_jax.data.corpus import INFO_FILE, CorpusSource, curated_dir, write_shard
from llm_jax.errors import UserError

META = "meta.json"
_BATCH = 256


def tokens_dir(config: Any, tokenizer: Any) -> storage.AnyPath:
    """`data.tokens_dir`; else beside a shared corpus (`data.corpora`), one folder per
    tokenizer; else `<run_dir>/tokens`."""
    if config.data.tokens_dir:
        return storage.path(config.data.tokens_dir)
    if config.data.corpora:
        return curated_dir(config) / f"tokens-{tokenizer.fingerprint[:12]}"
    return storage.path(config.run_dir) / "tokens"


def _settings(corpus: CorpusSource, tokenizer: Any) -> dict[str, str]:
    info = (storage.path(corpus.directory) / INFO_FILE).read_bytes()
    return {"corpus": hashlib.sha256(info).hexdigest(), "tokenizer": tokenizer.fingerprint}


def _shard_name(index: int, count: int) -> str:
    return f"tokens.array_record-{index:05d}-of-{count:05d}"


def pretokenize(config: Any, tokenizer: Any, progress: bool = True) -> dict[str, Any]:
    """Encodes the curated corpus into `tokens_dir`; skipped when already done."""
    from tqdm import tqdm

    started = time.time()
    corpus = CorpusSource(curated_dir(config))
    out = tokens_dir(config, tokenizer)
    settings = _settings(corpus, tokenizer)
    meta_path = out / META
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("settings") == settings:
            return {**meta, "skipped": True}
        meta_path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("tokens.array_record-*"):
        stale.unlink()
    count = len(corpus)
    num_shards = max(1, len(corpus.paths))
    bounds = np.linspace(0, count, num_shards + 1).astype(int)
    total = 0
    bar = tqdm(total=count, unit="doc", desc="pretokenize", disable=not progress, mininterval=0.5)

    def records(start: int, stop: int) -> Iterator[bytes]:
        nonlocal total
        for first in range(start, stop, _BATCH):
            texts = [corpus[i] for i in range(first, min(first + _BATCH, stop))]
            for ids in tokenizer.encode_batch(texts):
                total += len(ids)
                yield np.asarray(ids, dtype="<i4").tobytes()
            bar.update(len(texts))

    for shard in range(num_shards):
        write_shard(out / _shard_name(shard, num_shards), records(bounds[shard], bounds[shard + 1]))
    bar.close()
    meta = {"documents": count, "tokens": total, "shards": num_shards, "settings": settings,
            "seconds": round(time.time() - started, 1)}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return meta


class TokenSource:
    """Random access to pre-tokenized documents (int32 arrays): a grain data source. Its shards
    are opened when it is made or unpickled, never by grain's reader threads (see CorpusSource)."""

    def __init__(self, directory: storage.PathLike) -> None:
        self.directory = str(directory)
        meta = storage.path(directory) / META
        if not meta.is_file():
            raise UserError(f"no pre-tokenized corpus in {directory}: run `llm-jax tokenizer "
                            "--pretokenize` (with the same --config) first, or set data.pretokenized=false")
        self.meta = json.loads(meta.read_text())
        shards = sorted(storage.path(directory).glob("tokens.array_record-*-of-*"))
        self.paths = [str(storage.local_copy(shard)) for shard in shards]
        self._open()

    def _open(self) -> None:
        import grain

        self._records = grain.sources.ArrayRecordDataSource(self.paths)

    @classmethod
    def open(cls, config: Any, tokenizer: Any) -> "TokenSource":
        """The pre-tokenized corpus of `config`, checked against the corpus and the tokenizer."""
        source = cls(tokens_dir(config, tokenizer))
        expected = _settings(CorpusSource(curated_dir(config)), tokenizer)
        if source.meta.get("settings") != expected:
            raise UserError(f"the pre-tokenized corpus in {source.directory} was made from another "
                            "corpus or tokenizer; run `llm-jax tokenizer --pretokenize` again")
        return source

    def __len__(self) -> int:
        return int(self.meta["documents"])

    def __getitem__(self, index: int) -> np.ndarray:
        return np.frombuffer(self._records[index], dtype="<i4")

    def __getstate__(self) -> dict[str, Any]:
        return {"directory": self.directory, "meta": self.meta, "paths": self.paths}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open()
