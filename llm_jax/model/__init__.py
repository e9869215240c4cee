"""The Llama-family decoder as pure-functional Flax modules."""

from llm_jax.model.params import abstract_params, count_params, init_params, logical_axes
from llm_jax.model.transformer import Transformer

__all__ = ["Transformer", "abstract_params", "count_params", "init_params", "logical_axes"]
