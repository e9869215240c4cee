"""The model's forward pass as the train step calls it: `forward(params, batch) -> logits`."""

from __future__ import annotations

from llm_jax.config import Config
from llm_jax.model import Transformer
from llm_jax.train.objectives import Batch, Forward


def make_forward(config: Config) -> Forward:
    model = Transformer(config.model)

    def forward(params, batch: Batch):
        return model.apply({"params": params}, batch["inputs"], batch["positions"],
                           batch["segment_ids"])

    return forward
