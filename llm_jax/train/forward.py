"""The model's forward pass as the train step calls it: `forward(params, batch) -> logits`."""

from __future__ import annotations

import jax.numpy as jnp
from jax.sharding import Mesh

from llm_jax.config import Config
from llm_jax.model import Transformer
from llm_jax.model.moe import LOSSES, router_loss
from llm_jax.train.objectives import Batch, Forward


def make_forward(config: Config, mesh: Mesh | None = None) -> Forward:
    """With a `pipe` axis larger than one, the layers run as a pipeline of that many stages
    over `train.microbatches` microbatches."""
    stages = mesh.shape["pipe"] if mesh is not None else 1
    model = Transformer(config.model, pipeline_stages=stages,
                        pipeline_microbatches=config.train.microbatches)

    def forward(params, batch: Batch, return_hidden: bool = False, with_router_loss=False):
        """Logits, or the final hidden states for heads (reward model, PPO's critic); with
        `with_router_loss`, also the mixture of experts' router losses (0 for a dense model)."""
        args = ({"params": params}, batch["inputs"], batch["positions"], batch["segment_ids"])
        if not with_router_loss:
            return model.apply(*args, return_hidden=return_hidden)
        if not config.model.moe.experts:
            return model.apply(*args, return_hidden=return_hidden), jnp.zeros(())
        out, state = model.apply(*args, return_hidden=return_hidden, mutable=[LOSSES])
        return out, router_loss(config.model.moe, state[LOSSES])

    return forward
