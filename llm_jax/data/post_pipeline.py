"""Grain pipelines for post-training: encoded examples in memory -> batches for the train step.

Examples are encoded once when a run starts (so that every bad record is counted before the
first step), split into train and eval like the pretraining corpus (`split_indices`), dealt
into data shards (`llm_jax.data.shards`: the global batch does not depend on the number of
processes), then each shard is shuffled, repeated, packed or padded and batched by grain.
Each iterator has get_state/set_state, so a resumed run continues with the next batch.

SFT batches follow the pretraining batch contract (`llm_jax.data.pipeline`): inputs, targets,
segment_ids, positions and a loss_mask that is 1 only on assistant tokens. With packing, grain's
first-fit packer puts several examples in a row; segment ids keep attention and loss inside
each example.

Preference batches hold whole sequences (prompt + reply, right-padded to `data.seq_len`), one
row per pair for each side, all [B, T]:

    chosen_tokens, rejected_tokens            int32   token ids, pad_id on padding
    chosen_mask, rejected_mask                float32 1 on the reply's tokens
    chosen_segment_ids, rejected_segment_ids  int32   1 on real tokens, 0 on padding
    chosen_positions, rejected_positions      int32   0, 1, 2, ...
    chosen_ref_logps, rejected_ref_logps      float32 the reference's summed log-prob of the
                                                      reply at position 0, zeros elsewhere (only
                                                      when precomputed)

Prompt batches (PPO) are just indices [B] into the prompts kept by the data object.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import grain
import numpy as np

from llm_jax.data.chat_format import Encoded
from llm_jax.data.pipeline import PackedRow, split_indices
from llm_jax.data.shards import ShardedBatches, host_shards, shard_seed
from llm_jax.errors import UserError

PAIR_SIDES = ("chosen", "rejected")


@dataclasses.dataclass(frozen=True)
class EncodedPair:
    prompt: np.ndarray  # int32 [p]
    chosen: np.ndarray  # int32 [c], the reply and its end marker
    rejected: np.ndarray  # int32 [r]


class _Items:
    """A grain data source over chosen items of a list, each turned into a record by `fn`."""

    def __init__(self, items: Sequence[Any], indices: np.ndarray, fn: Callable[[Any, int], Any]):
        self.items, self.indices, self.fn = items, indices, fn

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> Any:
        index = int(self.indices[position])
        return self.fn(self.items[index], index)


def shard_split(count: int, eval_fraction: float, split: str, shards: int, batch_size: int,
                process_index: int, process_count: int) -> dict[int, np.ndarray]:
    """Indices of a split in each data shard this process reads (`llm_jax.data.shards`)."""
    mine = host_shards(shards, batch_size, process_index, process_count)
    if split == "eval" and eval_fraction == 0:
        return {j: np.zeros((0,), np.int64) for j in mine}
    chosen = split_indices(count, eval_fraction, split)
    return {j: chosen[j::shards] for j in mine}


@dataclasses.dataclass(frozen=True)
class _PadBatch:
    """Pads a short final eval batch with rows that carry no loss (all fields zero but ids)."""

    size: int
    pad_id: int

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        first = next(iter(batch.values()))
        missing = self.size - len(first)
        if missing <= 0:
            return batch
        out = {}
        for key, value in batch.items():
            fill = self.pad_id if key.endswith(("inputs", "targets", "tokens", "index")) else 0
            out[key] = np.concatenate([value, np.full((missing, *value.shape[1:]), fill,
                                                      value.dtype)])
        return out


def _iterate(source: _Items, train: bool, seed: int, shuffle: bool) -> Any:
    ds = grain.MapDataset.source(source)
    if train:
        if shuffle:
            ds = ds.shuffle(seed=seed)
        ds = ds.repeat(None)
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=64))


def _finish(it: Any, batch_size: int, train: bool, pad_id: int) -> Any:
    it = it.batch(batch_size, drop_remainder=train)
    if not train:
        it = it.map(_PadBatch(batch_size, pad_id))
    return iter(it)


def _sharded(count: int, split: str, batch_size: int, seed: int, eval_fraction: float,
             shards: int, process_index: int, process_count: int, pad_id: int,
             shard_batches: Callable[[np.ndarray, int, int], Any]) -> ShardedBatches:
    """This process's batches: `shard_batches(indices, rows, seed)` for each of its shards."""
    parts = shard_split(count, eval_fraction, split, shards, batch_size, process_index,
                        process_count)
    if split == "train" and any(len(indices) == 0 for indices in parts.values()):
        raise UserError(f"a data shard has no training examples ({count} in all, "
                        f"data.shards={shards}); add data, lower data.shards or lower "
                        "post.eval_fraction")
    rows = batch_size // shards
    return ShardedBatches({j: shard_batches(indices, rows, shard_seed(seed, j)) if len(indices)
                           else iter(()) for j, indices in parts.items()}, pad_id)


# ---------------------------------------------------------------------------------------------
# SFT


def _sft_example(example: Encoded, _: int) -> dict[str, np.ndarray]:
    return {"inputs": example.tokens[:-1], "targets": example.tokens[1:],
            "loss_mask": example.weights[1:]}


@dataclasses.dataclass(frozen=True)
class _SftPaddedRow:
    length: int
    pad_id: int

    def __call__(self, example: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(example["inputs"])
        pad = self.length - n
        return {
            "inputs": np.pad(example["inputs"], (0, pad), constant_values=self.pad_id),
            "targets": np.pad(example["targets"], (0, pad), constant_values=self.pad_id),
            "segment_ids": np.pad(np.ones(n, np.int32), (0, pad)),
            "positions": np.pad(np.arange(n, dtype=np.int32), (0, pad)),
            "loss_mask": np.pad(example["loss_mask"], (0, pad)).astype(np.float32),
        }


def sft_batches(examples: Sequence[Encoded], *, split: str, seq_len: int, batch_size: int,
                pad_id: int, seed: int, eval_fraction: float, packing: bool = True,
                shuffle: bool = True, shards: int = 1, process_index: int = 0,
                process_count: int = 1) -> Any:
    """Batches of SFT rows (the pretraining contract); every example fits `seq_len` pairs;
    `batch_size` is the global batch, of which this process makes its shards' rows."""
    train = split == "train"

    def shard_batches(indices: np.ndarray, rows: int, rng_seed: int) -> Any:
        it = _iterate(_Items(examples, indices, _sft_example), train, rng_seed, shuffle)
        if packing:
            it = grain.experimental.FirstFitPackIterDataset(
                it, length_struct={"inputs": seq_len, "targets": seq_len, "loss_mask": seq_len},
                num_packing_bins=rows, seed=rng_seed, shuffle_bins=train)
            it = it.map(PackedRow(pad_id))
        else:
            it = it.map(_SftPaddedRow(seq_len, pad_id))
        return _finish(it, rows, train, pad_id)

    return _sharded(len(examples), split, batch_size, seed, eval_fraction, shards,
                    process_index, process_count, pad_id, shard_batches)


# ---------------------------------------------------------------------------------------------
# Preference pairs


def pair_row(pair: EncodedPair, seq_len: int, pad_id: int,
             reference: tuple[float, float] | None = None) -> dict[str, np.ndarray]:
    """Both sides of one pair as right-padded rows (see the module docstring)."""
    row: dict[str, np.ndarray] = {}
    for side, reply in zip(PAIR_SIDES, (pair.chosen, pair.rejected)):
        tokens = np.concatenate([pair.prompt, reply])[:seq_len]
        n, pad = len(tokens), seq_len - len(tokens)
        mask = np.zeros(n, np.float32)
        mask[len(pair.prompt):] = 1.0
        row[f"{side}_tokens"] = np.pad(tokens, (0, pad), constant_values=pad_id).astype(np.int32)
        row[f"{side}_mask"] = np.pad(mask, (0, pad))
        row[f"{side}_segment_ids"] = np.pad(np.ones(n, np.int32), (0, pad))
        row[f"{side}_positions"] = np.pad(np.arange(n, dtype=np.int32), (0, pad))
    if reference is not None:
        for side, logp in zip(PAIR_SIDES, reference):
            row[f"{side}_ref_logps"] = np.zeros(seq_len, np.float32)
            row[f"{side}_ref_logps"][0] = logp
    return row


@dataclasses.dataclass(frozen=True)
class _PairRows:
    seq_len: int
    pad_id: int
    reference: Any  # None, or pair index -> (chosen, rejected) summed reference logps

    def __call__(self, pair: EncodedPair, index: int) -> dict[str, np.ndarray]:
        reference = None if self.reference is None else self.reference[index]
        return pair_row(pair, self.seq_len, self.pad_id, reference)


def preference_batches(pairs: Sequence[EncodedPair], *, split: str, seq_len: int,
                       batch_size: int, pad_id: int, seed: int, eval_fraction: float,
                       reference: Any = None, shuffle: bool = True, shards: int = 1,
                       process_index: int = 0, process_count: int = 1) -> Any:
    """Batches of preference rows; `reference` maps a pair's index to its reference log-probs
    (it is read as batches are made, so it may be filled after the iterator is created)."""
    train = split == "train"
    rows_of = _PairRows(seq_len, pad_id, reference)

    def shard_batches(indices: np.ndarray, rows: int, rng_seed: int) -> Any:
        return _finish(_iterate(_Items(pairs, indices, rows_of), train, rng_seed, shuffle),
                       rows, train, pad_id)

    return _sharded(len(pairs), split, batch_size, seed, eval_fraction, shards, process_index,
                    process_count, pad_id, shard_batches)


def ordered_pair_batches(pairs: Sequence[EncodedPair], indices: np.ndarray, seq_len: int,
                         batch_size: int, pad_id: int):
    """(indices, batch) over the given pairs in order, the last batch padded: one pass, for
    precomputing reference log-probs."""
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        rows = [pair_row(pairs[i], seq_len, pad_id) for i in chunk]
        batch = {key: np.stack([r[key] for r in rows]) for key in rows[0]}
        yield chunk, _PadBatch(batch_size, pad_id)(batch)


# ---------------------------------------------------------------------------------------------
# Prompts (PPO)


def prompt_index_batches(count: int, *, split: str, batch_size: int, seed: int,
                         eval_fraction: float, shuffle: bool = True, shards: int = 1,
                         process_index: int = 0, process_count: int = 1) -> Any:
    """Batches {"index": [B]} of prompt indices; eval batches are padded with index -1."""
    train = split == "train"

    def shard_batches(indices: np.ndarray, rows: int, rng_seed: int) -> Any:
        it = _iterate(_Items(np.arange(count), indices, lambda i, _: {"index": np.int64(i)}),
                      train, rng_seed, shuffle)
        return _finish(it, rows, train, -1)

    return _sharded(count, split, batch_size, seed, eval_fraction, shards, process_index,
                    process_count, -1, shard_batches)
