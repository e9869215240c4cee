"""Weighted data mixtures (`data.mixture`): several sources, each its own curated corpus,
mixed row by row in training.

    data.mixture="web/*.txt=0.7,jsonl:code.jsonl=0.3"
    data.mixture_stages="9000:0.5/0.5"      # from step 9000 on (e.g. a decay phase's mix)

Each member is a `data.source` of its own, with the run's other data settings: `llm-jax
curate` curates each into `<data.corpora>/<its corpus name>` (`<run_dir>/corpora` when
`data.corpora` is empty), `llm-jax tokenizer` trains one tokenizer on all of them, and
`--pretokenize` writes each member's tokens beside its corpus. In training, every data shard
packs rows from each member separately, and each row of a batch comes from member m with
probability w_m of the stage the step is in, drawn with a generator seeded by (seed, shard,
step): the proportions of rows (and, rows being packed full, of tokens) are exact in
expectation in every batch, the same for any process count, and the mixture's state (its step
and every member's position) is the data shard's checkpointed state. Held-out evaluation reads
every member's held-out documents once, one member after another.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import numpy as np

from llm_jax.config import Config
from llm_jax.data.corpus import source_slug

SOURCE_FIELD = "mixture_source"  # per row of a mixed batch: its member's index


def member_configs(config: Config) -> list[Config]:
    """One config per member: its source, and its corpus under data.corpora."""
    corpora = config.data.corpora or f"{config.run_dir}/corpora"
    return [dataclasses.replace(config, data=dataclasses.replace(
        config.data, source=source, mixture="", mixture_stages="", corpora=corpora))
        for source, _ in config.data.mixture_members()]


def member_names(config: Config) -> list[str]:
    """Short names of the members for metrics (`tokens/<name>`), unique in the mixture."""
    names = []
    for i, (source, _) in enumerate(config.data.mixture_members()):
        slug = source_slug(source)[:32] or "source"
        names.append(slug if slug not in names else f"{slug}-{i}")
    return names


def weights_at(config: Config, step: int) -> np.ndarray:
    """The normalized member weights of the stage `step` is in."""
    current = None
    for start, weights in config.data.mixture_schedule():
        if step >= start:
            current = weights
    return np.asarray(current, np.float64)


class MixedRows:
    """One data shard's batches of `rows` rows, each drawn from a member's packed rows."""

    def __init__(self, config: Config, members: list[Iterator[dict[str, np.ndarray]]],
                 rows: int, seed: int) -> None:
        self.config, self.members, self.rows, self.seed = config, members, rows, seed
        self.step = 0

    def __iter__(self) -> "MixedRows":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.step])
        picks = rng.choice(len(self.members), size=self.rows, p=weights_at(self.config,
                                                                          self.step))
        chosen = [next(self.members[m]) for m in picks]
        self.step += 1
        batch = {key: np.stack([row[key] for row in chosen]) for key in chosen[0]}
        return {**batch, SOURCE_FIELD: picks.astype(np.int32)}

    def get_state(self) -> dict[str, Any]:
        return {"step": self.step, "members": [m.get_state() for m in self.members]}

    def set_state(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        for member, saved in zip(self.members, state["members"]):
            member.set_state(saved)


class Chained:
    """Random access to the chosen documents of several sources, one after another."""

    def __init__(self, parts: list[tuple[Any, np.ndarray]]) -> None:
        self.parts = parts
        self.starts = np.cumsum([0] + [len(chosen) for _, chosen in parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: int) -> Any:
        part = int(np.searchsorted(self.starts, index, side="right")) - 1
        documents, chosen = self.parts[part]
        return documents[int(chosen[index - self.starts[part]])]


class SourceTokens:
    """Real target tokens trained on per member since the last logged step, counted from the
    batches' source field and summed over processes when logged."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.counts = np.zeros(len(names), np.float64)

    def take(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The batch without its source field, after counting its tokens."""
        sources = batch.pop(SOURCE_FIELD, None)
        if sources is not None:
            np.add.at(self.counts, sources, batch["loss_mask"].sum(axis=1))
        return batch

    def metrics(self) -> dict[str, float]:
        """`tokens/<member>` since the previous call."""
        import jax
        from jax.experimental import multihost_utils

        counts, self.counts = self.counts, np.zeros_like(self.counts)
        if jax.process_count() > 1:
            counts = np.asarray(multihost_utils.process_allgather(counts)).sum(axis=0)
        return {f"tokens/{name}": float(c) for name, c in zip(self.names, counts)}
