"""The grain input pipeline: curated documents -> token rows -> batches for the train step.

    it = make_batch_iterator(config, tokenizer, split="train")
    batch = next(it)
    state = it.get_state()      # save with the checkpoint (JSON-safe; one entry per data shard)
    it = make_batch_iterator(config, tokenizer)
    it.set_state(state)         # continues exactly after the saved batch

Each batch is a dict of numpy arrays, B = this process's rows of the batch, T = `data.seq_len`:

    inputs       int32   [B, T]  token ids (pad_id on padding)
    targets      int32   [B, T]  the next token of each input
    segment_ids  int32   [B, T]  1..n numbering the documents of a row, 0 on padding
    positions    int32   [B, T]  position within the document, restarting at 0 for each one
    loss_mask    float32 [B, T]  1 where the target is a real next token of the same document

Every document is encoded as [bos] + tokens + [eos]. With `data.packing=pack` each document gives
(input, target) pairs inside itself only; documents longer than T are cut into pieces of T pairs
(each piece its own segment, positions from 0), and pieces are first-fit packed into rows (grain's
FirstFitPackIterDataset), so attention masked by segment ids never crosses a document and no
target belongs to another one. With `concat` documents are joined into one stream and cut into
rows of T+1 tokens (grain's ConcatThenSplitIterDataset): segment_ids are 1 and positions 0..T-1,
and the loss is masked where the target is the first token of the next document.

Order: documents are split once into train and eval (a fixed permutation, `data.eval_fraction`);
each split is dealt into `data.shards` data shards (`llm_jax.data.shards`) that pack their own
rows, so the global batch does not depend on the number of processes and each process reads
only its shards' documents; train shuffles each shard with its own seed (a new order every
epoch) and repeats forever, then shuffles its packed rows in windows of `data.shuffle_rows`
(grain's WindowShuffleIterDataset), so that the pieces of one long document, packed side by
side, are spread over many batches instead of filling one;
eval reads its documents once in fixed order and gives exactly `eval.steps` batches, cutting the
pass short or filling up with all-padding batches (loss_mask 0), so that every host takes the
same number of eval steps; `eval.steps=0` gives the whole pass instead, its last batch padded.
The same config, seed and state give the same batches. `data.pretokenized=true` reads token ids written by `pretokenize.py` instead of
encoding text on the fly (same documents, same split, same batches).

`data.worker_count > 0` runs the pipeline in that many grain worker processes, each packing its
own share of the documents: batches are then different from (but as deterministic and resumable
as) the single-process ones, so keep the worker count fixed across a resumed run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grain
import numpy as np

from llm_jax.config import Config, ConfigError
from llm_jax.data.mixture import Chained, MixedRows, member_configs
from llm_jax.data.shards import ShardedBatches, host_shards, shard_count, shard_seed
from llm_jax.errors import UserError

SPLITS = ("train", "eval")
_SPLIT_SEED = 0xC0FFEE  # fixed, so changing the training seed never moves documents between splits


def split_indices(num_documents: int, eval_fraction: float, split: str) -> np.ndarray:
    """Document indices of a split: a fixed random `eval_fraction` (at least one document when
    the fraction is positive) is eval, the rest train; each in increasing order."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    num_eval = int(round(num_documents * eval_fraction))
    if eval_fraction > 0:
        num_eval = min(max(num_eval, 1), num_documents - 1)
    order = np.random.default_rng(_SPLIT_SEED).permutation(num_documents)
    chosen = order[:num_eval] if split == "eval" else order[num_eval:]
    return np.sort(chosen)


class _Subset:
    """A grain data source over chosen indices of another source."""

    def __init__(self, source: Any, indices: np.ndarray) -> None:
        self.source, self.indices = source, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.source[int(self.indices[index])]


@dataclasses.dataclass(frozen=True)
class _Encode:
    """Text -> [bos] + ids + [eos] as int32 (pre-tokenized input only gains bos and eos)."""

    tokenizer: Any
    bos: int
    eos: int

    def __call__(self, item: str | np.ndarray) -> np.ndarray:
        ids = self.tokenizer.encode(item) if isinstance(item, str) else item
        out = np.empty(len(ids) + 2, dtype=np.int32)
        out[0], out[1:-1], out[-1] = self.bos, ids, self.eos
        return out


class _Pieces(grain.experimental.FlatMapTransform):
    """One document's (input, target) pairs, cut into pieces of at most `length` pairs."""

    max_fan_out = 1 << 20  # grain checks it only for MapDataset flat maps

    def __init__(self, length: int) -> None:
        self.length = length

    def flat_map(self, tokens: np.ndarray) -> list[dict[str, np.ndarray]]:
        inputs, targets = tokens[:-1], tokens[1:]
        return [{"inputs": inputs[i : i + self.length], "targets": targets[i : i + self.length]}
                for i in range(0, len(inputs), self.length)]


def _as_stream(tokens: np.ndarray) -> dict[str, np.ndarray]:
    return {"tokens": tokens}


@dataclasses.dataclass(frozen=True)
class PackedRow:
    """A first-fit packed row in the batch format; padding gets pad ids and no loss. A row
    that carries its own `loss_mask` (SFT: assistant tokens only) keeps it on real tokens."""

    pad_id: int

    def __call__(self, row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        segments = row["inputs_segment_ids"].astype(np.int32)
        real = segments > 0
        return {
            "inputs": np.where(real, row["inputs"], self.pad_id).astype(np.int32),
            "targets": np.where(real, row["targets"], self.pad_id).astype(np.int32),
            "segment_ids": segments,
            "positions": np.where(real, row["inputs_positions"], 0).astype(np.int32),
            "loss_mask": np.where(real, row.get("loss_mask", 1.0), 0).astype(np.float32),
        }


@dataclasses.dataclass(frozen=True)
class _ConcatRow:
    pad_id: int
    eos_id: int

    def __call__(self, row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tokens, real = row["tokens"], row["tokens_segment_ids"] > 0
        tokens = np.where(real, tokens, self.pad_id).astype(np.int32)
        inputs, targets = tokens[:-1], tokens[1:]
        valid = real[1:] & (inputs != self.eos_id)
        return {
            "inputs": inputs,
            "targets": targets,
            "segment_ids": real[:-1].astype(np.int32),
            "positions": np.arange(len(inputs), dtype=np.int32),
            "loss_mask": valid.astype(np.float32),
        }


@dataclasses.dataclass(frozen=True)
class _PadBatch:
    """Pads a short final eval batch with rows that are all padding (loss_mask 0)."""

    size: int
    pad_id: int

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = self.size - len(batch["inputs"])
        if missing <= 0:
            return batch
        fill = {"inputs": self.pad_id, "targets": self.pad_id}
        return {key: np.concatenate([value, np.full((missing, *value.shape[1:]), fill.get(key, 0),
                                                    value.dtype)]) for key, value in batch.items()}


class _EvalBatches:
    """Exactly `steps` batches: those of `batches`, then all-padding ones."""

    def __init__(self, batches: Any, steps: int, shape: tuple[int, int], pad_id: int) -> None:
        self.batches, self.steps, self.taken = batches, steps, 0
        self.empty = {
            "inputs": np.full(shape, pad_id, np.int32), "targets": np.full(shape, pad_id, np.int32),
            "segment_ids": np.zeros(shape, np.int32), "positions": np.zeros(shape, np.int32),
            "loss_mask": np.zeros(shape, np.float32)}

    def __iter__(self) -> "_EvalBatches":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.taken >= self.steps:
            raise StopIteration
        self.taken += 1
        batch = next(self.batches, None) if self.batches is not None else None
        if batch is None:
            self.batches = None
            return {key: value.copy() for key, value in self.empty.items()}
        return batch

    def get_state(self) -> dict[str, Any]:
        inner = self.batches.get_state() if self.batches is not None else None
        return {"taken": self.taken, "batches": inner}

    def set_state(self, state: dict[str, Any]) -> None:
        self.taken = state["taken"]
        if state["batches"] is None:
            self.batches = None
        else:
            self.batches.set_state(state["batches"])


def _documents(config: Config, tokenizer: Any) -> Any:
    """Random access to every document of the corpus: text, or token ids when pre-tokenized."""
    if config.data.pretokenized:
        from llm_jax.data.pretokenize import TokenSource

        return TokenSource.open(config, tokenizer)
    from llm_jax.data.corpus import CorpusSource, curated_dir

    return CorpusSource(curated_dir(config))


def _host(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        return jax.process_index(), jax.process_count()
    return process_index, process_count


def make_batch_iterator(
    config: Config,
    tokenizer: Any,
    *,
    split: str = "train",
    batch_size: int | None = None,
    seed: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Any:
    """This process's batches (see module docstring) with get_state/set_state (JSON-safe).

    `batch_size` is the global batch (default `train.batch_size`); each process gets the rows
    of its data shards (`llm_jax.data.shards`). `seed` defaults to `config.seed`. The process
    arguments default to JAX's.
    """
    index, count = _host(process_index, process_count)
    batch_size = config.train.batch_size if batch_size is None else batch_size
    shards = shard_count(config)
    mine = host_shards(shards, batch_size, index, count)
    if tokenizer.vocab_size > config.model.vocab_size:
        raise ConfigError(f"the tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size="
                          f"{config.model.vocab_size}; raise model.vocab_size")
    seed = config.seed if seed is None else seed
    members = ([(_documents(member, tokenizer), member) for member in member_configs(config)]
               if config.data.mixture else [(_documents(config, tokenizer), config)])
    parts = [(documents, split_indices(len(documents), config.data.eval_fraction, split))
             for documents, _ in members]
    for (documents, chosen), (_, member) in zip(parts, members):
        if split == "train" and len(chosen) < shards:
            raise UserError(f"{len(chosen)} training documents of {member.data.source} cannot "
                            f"fill data.shards={shards} ({len(documents)} in its corpus); "
                            "lower data.shards or add documents")
    encode = _Encode(tokenizer, tokenizer.bos_id, tokenizer.eos_id)
    for documents, chosen in parts:
        if len(chosen):
            # One document read and encoded here first: whatever the source or the tokenizer
            # imports or builds on first use is then done in this thread, never by grain's
            # reader threads at once (which can deadlock on Python's import locks).
            encode(documents[int(chosen[0])])
    # Fewer reader threads per shard when a process reads many: the batches do not change.
    read = grain.ReadOptions(num_threads=max(1, 4 // len(mine)),
                             prefetch_buffer_size=max(16, 256 // len(mine)))
    rows = batch_size // shards
    if config.data.mixture and split == "train":
        iterators = {j: _mixed_shard(config, [(d, c[j::shards]) for d, c in parts], encode,
                                     rows, shard_seed(seed, j), read, tokenizer.pad_id)
                     for j in mine}
    else:  # one corpus; or a mixture's held-out documents, member after member
        documents = Chained(parts) if config.data.mixture else parts[0][0]
        chosen = np.arange(len(documents)) if config.data.mixture else parts[0][1]
        iterators = {j: _shard_batches(config, documents, chosen[j::shards], encode, split,
                                       rows, shard_seed(seed, j), read, tokenizer.pad_id)
                     for j in mine}
    return ShardedBatches(iterators, tokenizer.pad_id)


def _shard_rows(config: Config, documents: Any, chosen: np.ndarray, encode: _Encode,
                train: bool, rows: int, seed: int, read: grain.ReadOptions, pad_id: int) -> Any:
    """One shard's packed rows (grain IterDataset), from its documents `chosen`."""
    length = config.data.seq_len
    ds = grain.MapDataset.source(_Subset(documents, chosen))
    if train:
        if config.data.shuffle:
            ds = ds.shuffle(seed=seed)
        ds = ds.repeat(None)
    ds = ds.map(encode)
    it = ds.to_iter_dataset(read)
    if config.data.packing == "pack":
        it = grain.experimental.FlatMapIterDataset(it, _Pieces(length))
        it = grain.experimental.FirstFitPackIterDataset(
            it, length_struct={"inputs": length, "targets": length},
            num_packing_bins=rows, seed=seed, shuffle_bins=train)
        it = it.map(PackedRow(pad_id))
    else:
        it = it.map(_as_stream)
        it = grain.experimental.ConcatThenSplitIterDataset(it, length_struct={"tokens": length + 1})
        it = it.map(_ConcatRow(pad_id, encode.eos))
    if train and config.data.shuffle and config.data.shuffle_rows > 1:
        it = grain.experimental.WindowShuffleIterDataset(
            it, window_size=config.data.shuffle_rows, seed=seed)
    return it


def _shard_batches(config: Config, documents: Any, chosen: np.ndarray, encode: _Encode,
                   split: str, rows: int, seed: int, read: grain.ReadOptions, pad_id: int) -> Any:
    """One shard's `rows` rows of every batch, from its documents `chosen`."""
    length, train = config.data.seq_len, split == "train"
    eval_steps = 0 if train else config.eval.steps
    if len(chosen) == 0:
        if eval_steps:
            return _EvalBatches(None, eval_steps, (rows, length), pad_id)
        return iter(())
    it = _shard_rows(config, documents, chosen, encode, train, rows, seed, read, pad_id)
    it = it.batch(rows, drop_remainder=train)
    if not train:
        it = it.map(_PadBatch(rows, pad_id))
    if config.data.worker_count:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain 0.2.18 reads an absl flag when starting workers
            flags.FLAGS.mark_as_parsed()  # (google/grain#1355); defaults are what we want
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.data.worker_count))
    if eval_steps:
        return _EvalBatches(iter(it), eval_steps, (rows, length), pad_id)
    return iter(it)


def _mixed_shard(config: Config, members: list[tuple[Any, np.ndarray]], encode: _Encode,
                 rows: int, seed: int, read: grain.ReadOptions, pad_id: int) -> MixedRows:
    """One shard's training batches, each row from a member drawn by the stage's weights."""
    if config.data.worker_count:
        raise UserError("data.mixture runs in this process; set data.worker_count=0")
    member_rows = [iter(_shard_rows(config, documents, chosen, encode, True, rows,
                                    shard_seed(seed, 1000 + m), read, pad_id))
                   for m, (documents, chosen) in enumerate(members)]
    return MixedRows(config, member_rows, rows, seed)


def batch_tokens(batch: dict[str, np.ndarray]) -> int:
    """Real (non-padding) target tokens in a batch: what throughput is counted in."""
    return int(batch["loss_mask"].sum())
