"""Data shards: a split of the data that does not depend on how many processes read it.

With S = `data.shards` (0: gcd(train.batch_size, 64)), shard j takes the examples `chosen[j::S]`
of a split and makes its own B/S rows of every global batch of B rows; the global batch is shard
0's rows, then shard 1's, and so on. Process h of H reads shards [h*S/H, (h+1)*S/H) and its
local batch is their rows in shard order, which is where the mesh puts process h's rows
(`jax.make_array_from_process_local_data`). So every H that divides S trains on the same
batches, and a run resumes on another process count: its saved data state holds every shard's
iterator state (`merge_states`), and each process takes its own shards' states back.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import numpy as np

from llm_jax.config import Config, ConfigError
from llm_jax.errors import UserError

AUTO_LIMIT = 64  # the default shard count divides this: enough for a 64-host pod


def shard_count(config: Config) -> int:
    """`data.shards`, or by default the largest divisor of train.batch_size that divides 64."""
    return config.data.shards or math.gcd(config.train.batch_size, AUTO_LIMIT)


def host_shards(shards: int, batch_size: int, process_index: int, process_count: int) -> range:
    """The shards process `process_index` of `process_count` reads."""
    if batch_size % shards:
        raise ConfigError(f"data.shards={shards} does not divide train.batch_size={batch_size}; "
                          "each shard makes an equal share of every batch")
    if shards % process_count:
        raise ConfigError(f"data.shards={shards} is not divisible by the {process_count} "
                          f"processes; set data.shards to a multiple of {process_count} that "
                          f"divides train.batch_size={batch_size}")
    per_host = shards // process_count
    return range(process_index * per_host, (process_index + 1) * per_host)


def shard_seed(seed: int, shard: int) -> int:
    """Each shard's own shuffle seed: with one seed for all, shard j's k-th document would be
    the neighbour of every other shard's k-th, and a batch would hold runs of the corpus."""
    return int(np.random.SeedSequence([seed, shard]).generate_state(1)[0])


def _padding(part: dict[str, np.ndarray], pad_id: int) -> dict[str, np.ndarray]:
    """Rows shaped like `part` that carry no loss: ids are padding, everything else zero."""
    ids = ("inputs", "targets", "tokens", "index")
    return {key: np.full_like(value, pad_id if key.endswith(ids) else 0)
            for key, value in part.items()}


class ShardedBatches:
    """One process's batches: each of its shards' batches, joined in shard order.

    A finite (eval) shard that runs out gives padding rows until every shard has run out.
    """

    def __init__(self, iterators: dict[int, Iterator[dict[str, np.ndarray]]], pad_id: int):
        self.iterators, self.pad_id = iterators, pad_id
        self._done: set[int] = set()
        self._shape: dict[str, np.ndarray] | None = None

    def __iter__(self) -> "ShardedBatches":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        parts: list[dict[str, np.ndarray] | None] = []
        for shard, iterator in self.iterators.items():
            part = None if shard in self._done else next(iterator, None)
            if part is None:
                self._done.add(shard)
            parts.append(part)
        if len(self._done) == len(self.iterators):
            raise StopIteration
        shape = next(p for p in parts if p is not None)
        parts = [_padding(shape, self.pad_id) if p is None else p for p in parts]
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}

    def get_state(self) -> dict[str, Any]:
        """This process's shards only; the checkpoint merges every process's (`merge_states`)."""
        return {"shards": {str(j): it.get_state() for j, it in self.iterators.items()}}

    def set_state(self, state: dict[str, Any]) -> None:
        saved = state.get("shards") if isinstance(state, dict) else None
        if saved is None:
            raise UserError("the checkpoint's data state has no data shards (written before "
                            "they existed); resume it with the version that wrote it")
        missing = [j for j in self.iterators if str(j) not in saved]
        if missing:
            raise UserError(f"the checkpoint's data state holds {len(saved)} data shards, not "
                            f"shard {missing[0]}: resume with the data.shards it was written with "
                            f"({len(saved)})")
        for shard, iterator in self.iterators.items():
            iterator.set_state(_slices_as_tuples(saved[str(shard)]))


def _slices_as_tuples(state: Any) -> Any:
    """A JSON-restored iterator state with grain's concat `remainder_slices` as tuples again:
    grain tells "no remainder" by `slice == (-1, -1)`, which a JSON list never equals, so a
    restored concat pipeline would read one document too many."""
    if isinstance(state, dict):
        return {key: ({name: tuple(pair) for name, pair in value.items()}
                      if key == "remainder_slices" else _slices_as_tuples(value))
                for key, value in state.items()}
    if isinstance(state, list):
        return [_slices_as_tuples(item) for item in state]
    return state


def merge_states(states: Sequence[Any]) -> Any:
    """Every process's `get_state()` as one state that holds all shards (a state that wraps
    sharded ones, such as PPO's rollout schedule, is merged inside)."""
    first = states[0]
    if not isinstance(first, dict):
        return first
    if "shards" in first:
        merged = {k: v for state in states for k, v in state["shards"].items()}
        return {**first, "shards": dict(sorted(merged.items(), key=lambda kv: int(kv[0])))}
    return {key: merge_states([state[key] for state in states]) for key in first}
