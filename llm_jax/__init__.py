"""llm_jax: build a large language model from scratch in JAX, from raw text to an aligned model."""

from llm_jax.xla_flags import apply_defaults

apply_defaults()

__version__ = "0.1.0"
