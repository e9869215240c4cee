"""What every post-training data object shares: the run's tokenizer and chat template, and
records read from `post.data` and encoded with skip accounting.

Records are read and encoded when the run starts; what was dropped and why is printed, saved
as `<run_dir>/post_data.json`, and stops the run when there is too much of it
(`post.max_skipped_fraction`).
"""

from __future__ import annotations

from typing import Any

import jax

from llm_jax import storage
from llm_jax.config import Config, ConfigError
from llm_jax.data.chat_format import Message, make_template
from llm_jax.data.records import RecordError, SkipReport, read_records
from llm_jax.data.shards import shard_count
from llm_jax.train.data import run_tokenizer

REPORT_FILE = "post_data.json"


def with_system(messages: list[Message], system: str) -> list[Message]:
    if not system or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": system}] + messages


class PostTrainingData:
    """What every post-training data object shares: tokenizer, template, report."""

    what = ""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.tokenizer = run_tokenizer(config)
        if self.tokenizer.vocab_size > config.model.vocab_size:
            raise ConfigError(f"the tokenizer has {self.tokenizer.vocab_size} tokens but "
                              f"model.vocab_size={config.model.vocab_size}")
        self.template = make_template(config.post.template, self.tokenizer)
        self.report = SkipReport(f"{config.train.objective} data ({self.template.name} template)")
        self.token_bytes = None
        self.process_index, self.process_count = jax.process_index(), jax.process_count()
        if config.train.batch_size % self.process_count:
            raise ConfigError(f"train.batch_size={config.train.batch_size} is not divisible by "
                              f"the {self.process_count} hosts")

    def _read(self) -> None:
        """Encodes every record with `self._encode`, counting what is dropped, then checks."""
        for record in read_records(self.config.post.data, self.report):
            try:
                self._encode(record.value)
            except RecordError as err:
                self.report.skip(record, err)
        if self.process_index == 0:
            print(self.report.summary())
            self.report.save(storage.path(self.config.run_dir) / REPORT_FILE)
        self.report.check(self.config.post.max_skipped_fraction)

    def _encode(self, value: dict) -> None:
        raise NotImplementedError

    def _split_args(self) -> dict[str, Any]:
        """The global batch and this process's place: each process reads its data shards."""
        return dict(batch_size=self.config.train.batch_size, seed=self.config.seed,
                    eval_fraction=self.config.post.eval_fraction,
                    shuffle=self.config.data.shuffle, shards=shard_count(self.config),
                    process_index=self.process_index, process_count=self.process_count)
