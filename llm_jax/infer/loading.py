"""A checkpoint ready for inference: its config, parameters and tokenizer, checked together."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from llm_jax import checkpoint as ckpt
from llm_jax.config import Config
from llm_jax.data.tokenizer import Tokenizer
from llm_jax.errors import UserError
from llm_jax.infer.generator import Generator


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    config: Config
    params: Any
    tokenizer: Tokenizer

    def generator(self, **kwargs: Any) -> Generator:
        """A `Generator` that stops rows at this tokenizer's end-of-sequence ids."""
        return Generator(self.config.model, self.params, eos_ids=self.tokenizer.eos_ids,
                         pad_id=self.tokenizer.pad_id, **kwargs)


def load_model(checkpoint: str | Path) -> LoadedModel:
    """Loads the tokenizer first, so a checkpoint without one fails before the weights load."""
    tokenizer = ckpt.load_run_tokenizer(checkpoint)
    config, params = ckpt.restore_params(checkpoint)
    if tokenizer.vocab_size > config.model.vocab_size:
        raise UserError(
            f"the tokenizer of {checkpoint} has {tokenizer.vocab_size} tokens but the model "
            f"only {config.model.vocab_size} (model.vocab_size): they do not belong together")
    return LoadedModel(config=config, params=params, tokenizer=tokenizer)
