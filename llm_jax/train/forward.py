"""The model's forward pass as the train step calls it: `forward(params, batch) -> logits`."""

from __future__ import annotations

from jax.sharding import Mesh

from llm_jax.config import Config
from llm_jax.model import Transformer
from llm_jax.train.objectives import Batch, Forward


def make_forward(config: Config, mesh: Mesh | None = None) -> Forward:
    """With a `pipe` axis larger than one, the layers run as a pipeline of that many stages
    over `train.microbatches` microbatches."""
    stages = mesh.shape["pipe"] if mesh is not None else 1
    model = Transformer(config.model, pipeline_stages=stages,
                        pipeline_microbatches=config.train.microbatches)

    def forward(params, batch: Batch, return_hidden: bool = False):
        """Logits, or the final hidden states for heads (reward model, PPO's critic)."""
        return model.apply({"params": params}, batch["inputs"], batch["positions"],
                           batch["segment_ids"], return_hidden=return_hidden)

    return forward
