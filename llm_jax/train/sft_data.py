"""SFT data: conversations encoded with the chat template, packed into rows."""

from __future__ import annotations

import numpy as np

from llm_jax.config import Config
from llm_jax.data.chat_format import Encoded
from llm_jax.data.instructions import conversations
from llm_jax.data.post_pipeline import sft_batches
from llm_jax.data.records import RecordError
from llm_jax.train.post_records import PostTrainingData, with_system


class SftData(PostTrainingData):
    """Conversations encoded with the chat template; loss on the assistant's tokens only."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.examples: list[Encoded] = []
        self._read()

    def _encode(self, value: dict) -> None:
        seq_len = self.config.data.seq_len
        for messages in conversations(value):
            encoded = self.template.encode(with_system(messages, self.config.post.system))
            trained = np.flatnonzero(encoded.weights)
            if len(trained) == 0:
                raise RecordError("empty_completion", "the reply encodes to no tokens")
            if trained[0] >= seq_len:
                raise RecordError("prompt_too_long", f"the prompt has {trained[0]} tokens; "
                                  f"data.seq_len={seq_len}")
            if len(encoded) - 1 > seq_len:
                raise RecordError("too_long", f"{len(encoded)} tokens > data.seq_len + 1 = "
                                  f"{seq_len + 1}")
            self.examples.append(encoded)
            self.report.examples += 1

    def _batches(self, split: str):
        return sft_batches(self.examples, split=split, seq_len=self.config.data.seq_len,
                           pad_id=self.tokenizer.pad_id, packing=self.config.post.packing,
                           **self._split_args())

    def train_iterator(self):
        return self._batches("train")

    def eval_iterator(self):
        return self._batches("eval") if self.config.post.eval_fraction else iter(())
