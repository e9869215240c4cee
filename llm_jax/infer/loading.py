"""A checkpoint ready for inference: its config, parameters and tokenizer, checked together,
the parameters restored directly in their shards over the inference mesh."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

from llm_jax import checkpoint as ckpt
from llm_jax.config import Config
from llm_jax.data.tokenizer import Tokenizer
from llm_jax.errors import UserError
from llm_jax.infer.generator import Generator
from llm_jax.infer.placement import Placement, param_shardings, place


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    config: Config
    params: Any
    tokenizer: Tokenizer
    placement: Placement

    def generator(self, **kwargs: Any) -> Generator:
        """A `Generator` on this model's mesh that stops rows at the tokenizer's end ids."""
        settings = {"mesh": self.placement.mesh, "rules": self.placement.rules, **kwargs}
        return Generator(self.config.model, self.params, eos_ids=self.tokenizer.eos_ids,
                         pad_id=self.tokenizer.pad_id, **settings)


def restore_sharded(checkpoint: str | Path, overrides: Sequence[str] = ()
                    ) -> tuple[Config, Any, Placement]:
    """(config, params in their shards, placement) for `mesh.*` `overrides` (default: fsdp
    over all devices); no parameter is ever whole on one device."""
    run_dir, _ = ckpt.resolve(checkpoint)
    config, placement = place(ckpt.load_run_config(run_dir), overrides)
    _, params = ckpt.restore_params(checkpoint, param_shardings(config, placement))
    return config, params, placement


def load_model(checkpoint: str | Path, overrides: Sequence[str] = ()) -> LoadedModel:
    """Loads the tokenizer first, so a checkpoint without one fails before the weights load."""
    tokenizer = ckpt.load_run_tokenizer(checkpoint)
    config, params, placement = restore_sharded(checkpoint, overrides)
    if tokenizer.vocab_size > config.model.vocab_size:
        raise UserError(
            f"the tokenizer of {checkpoint} has {tokenizer.vocab_size} tokens but the model "
            f"only {config.model.vocab_size} (model.vocab_size): they do not belong together")
    return LoadedModel(config=config, params=params, tokenizer=tokenizer, placement=placement)
