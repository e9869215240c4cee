"""llm_jax: build a large language model from scratch in JAX, from raw text to an aligned model."""

__version__ = "0.1.0"
