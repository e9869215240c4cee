"""Preference data for DPO and the reward model: (prompt, chosen, rejected) pairs."""

from __future__ import annotations

from typing import Any

import numpy as np

from llm_jax import storage
from llm_jax.config import Config
from llm_jax.data.post_pipeline import EncodedPair, preference_batches
from llm_jax.data.preference import preference_pair
from llm_jax.data.records import RecordError
from llm_jax.train.objective_eval import make_objective_eval
from llm_jax.train.post_records import PostTrainingData, with_system
from llm_jax.train.reference_logprobs import REFERENCE_FILE, reference_logprobs


class PreferenceData(PostTrainingData):
    """Preference pairs for DPO and the reward model."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.pairs: list[EncodedPair] = []
        precomputed = config.train.objective == "dpo" and config.dpo.reference == "precomputed"
        # Filled by `attach` before the first batch is drawn; the pipeline reads it lazily.
        self.reference: dict[int, tuple[float, float]] | None = {} if precomputed else None
        self._evaluate = None
        self._read()

    def _encode(self, value: dict) -> None:
        seq_len = self.config.data.seq_len
        pair = preference_pair(value, chat=self.template.name != "none")
        prompt = self.template.encode_prompt(with_system(pair.prompt, self.config.post.system))
        chosen = self.template.encode_reply(pair.chosen).tokens
        rejected = self.template.encode_reply(pair.rejected).tokens
        if len(prompt) >= seq_len:
            raise RecordError("prompt_too_long", f"the prompt has {len(prompt)} tokens; "
                              f"data.seq_len={seq_len}")
        room = seq_len - len(prompt)
        if max(len(chosen), len(rejected)) > room:
            chosen, rejected = chosen[:room], rejected[:room]
            if np.array_equal(chosen, rejected):
                raise RecordError("identical_after_truncation",
                                  f"the replies differ only after data.seq_len={seq_len}")
            self.report.note("replies_truncated")
        self.pairs.append(EncodedPair(prompt, chosen, rejected))
        self.report.examples += 1

    def _batches(self, split: str):
        return preference_batches(self.pairs, split=split, seq_len=self.config.data.seq_len,
                                  pad_id=self.tokenizer.pad_id, reference=self.reference,
                                  **self._split_args())

    def train_iterator(self):
        return self._batches("train")

    def eval_iterator(self):
        return self._batches("eval") if self.config.post.eval_fraction else iter(())

    def attach(self, training: Any, state: Any) -> None:
        self._evaluate = make_objective_eval(training)
        if self.reference is not None:
            path = storage.path(self.config.run_dir) / REFERENCE_FILE
            self.reference.update(reference_logprobs(self.config, training, state, self.pairs,
                                                     path, self.tokenizer.pad_id))

    def evaluate(self, state: Any) -> dict[str, float]:
        return self._evaluate(state, self.eval_iterator(), self.config.eval.steps)
