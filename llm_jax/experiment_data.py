"""What every run of an experiment shares, made once before the first run (in `<out>/_data`).

`CuratedCorpus` (the pretraining ablations): the built-in corpus curated, and a tokenizer
trained on it. `ReversalTask` (post-training): an SFT checkpoint on the reversals of half of
a word list (`llm_jax.data.reversal`), which every run starts from (and DPO keeps as its frozen
reference), and the other half for the runs: as preference pairs, or as more SFT records
(fine-tuning on words the checkpoint never saw), so that the variants differ only in what the
sweep changes. Each kind says which overrides point a run at what it made.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence

from llm_jax import storage
from llm_jax.config import Config, load_config
from llm_jax.train.metrics import read_metrics


class Experiment(Protocol):
    """What shared data reads of an `llm_jax.experiment.Experiment` (which imports this module)."""

    base: str  # preset name
    scales: dict[str, tuple[str, ...]]


class SharedData(Protocol):
    def prepare(self, experiment: Experiment, scale: str, data_dir: storage.AnyPath,
                extra: Sequence[str]) -> None: ...

    def overrides(self, data_dir: storage.AnyPath, config: Config) -> tuple[str, ...]:
        """What points a run (`config`, before these) at what `prepare` made."""


def finished(config: Config) -> bool:
    """Whether the run's metrics reach its last step and its final evaluation."""
    records = read_metrics(config.run_dir)
    return bool(records) and records[-1]["step"] >= config.train.steps and (
        "eval_loss" in records[-1])


def train_unless_finished(config: Config) -> list[dict]:
    """Trains (or resumes) one run unless its metrics show it finished; returns them."""
    from llm_jax.train.loop import train
    from llm_jax.train.post_data import training_data

    if not finished(config):
        data = training_data(config)
        train(config, data, progress=False)
    return read_metrics(config.run_dir)


@dataclasses.dataclass(frozen=True)
class CuratedCorpus:
    """The corpus and tokenizer of the experiment's settings: in `<out>/_data`, or with
    `data.corpora` set the shared prepared ones (curated once for every experiment and run with
    the same data settings, and only read when already there), which the runs find by their
    settings. `_data/corpus.json` records which ones they read."""

    RECORD = "corpus.json"

    def prepare(self, experiment: Experiment, scale: str, data_dir: storage.AnyPath,
                extra: Sequence[str]) -> None:
        import json

        from llm_jax.data.corpus import curated_dir
        from llm_jax.data.curate import curate
        from llm_jax.data.tokenizer_training import default_model_path, train_from_config

        config = load_config(experiment.base, [*experiment.scales[scale], *extra,
                                               f"run_dir={data_dir}"])
        curate(config, progress=False)
        record = train_from_config(config, progress=False)
        used = {"curated_dir": str(curated_dir(config)),
                "tokenizer": str(default_model_path(config)), "tokenizer_sha256": record["sha256"]}
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / self.RECORD).write_text(json.dumps(used, indent=2) + "\n")

    def overrides(self, data_dir: storage.AnyPath, config: Config) -> tuple[str, ...]:
        if config.data.corpora:
            return ()
        return (f"data.curated_dir={data_dir / 'curated'}",
                f"tokenizer.path={data_dir / 'tokenizer' / 'tokenizer.model'}")


@dataclasses.dataclass(frozen=True)
class ReversalTask:
    """SFT on the reversals of half the words; the other half for the runs, as (reversal, near
    miss) pairs (`runs_on="pairs"`) or as SFT records (`"sft"`), so that the held-out records
    are new to both the starting checkpoint and the runs."""

    words: dict[str, int]  # distinct words per scale
    sft: dict[str, tuple[str, ...]]  # the SFT run's overrides per scale, after the scale's own
    sft_preset: str = "sft-tiny"
    runs_on: str = "pairs"

    def prepare(self, experiment: Experiment, scale: str, data_dir: storage.AnyPath,
                extra: Sequence[str]) -> None:
        from llm_jax.data import reversal

        vocabulary = reversal.words(self.words[scale])
        half = len(vocabulary) // 2
        sft = reversal.write_jsonl(data_dir / "sft.jsonl", reversal.sft_records(vocabulary[:half]))
        records = (reversal.preference_records if self.runs_on == "pairs"
                   else reversal.sft_records)(vocabulary[half:])
        reversal.write_jsonl(self._runs_data(data_dir), records)
        tokenizer = reversal.train_chat_tokenizer(data_dir / "tokenizer" / "tokenizer.model")
        train_unless_finished(load_config(self.sft_preset, [
            *experiment.scales[scale], *self.sft[scale], *extra, f"run_dir={data_dir / 'sft'}",
            f"tokenizer.path={tokenizer}", f"post.data={sft}"]))

    def _runs_data(self, data_dir: storage.AnyPath) -> storage.AnyPath:
        return data_dir / ("pairs.jsonl" if self.runs_on == "pairs" else "tune.jsonl")

    def overrides(self, data_dir: storage.AnyPath, config: Config) -> tuple[str, ...]:
        return (f"train.init_from={data_dir / 'sft'}", f"post.data={self._runs_data(data_dir)}")
