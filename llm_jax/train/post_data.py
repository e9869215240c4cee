"""The training loop's view of its data, one class per kind of objective.

    lm             TrainingData    the curated corpus (pretraining; `train/data.py`)
    sft            SftData         conversations, loss on the assistant's tokens, packed rows
    dpo, reward    PreferenceData  (prompt, chosen, rejected) pairs
    ppo            PromptData      prompts; batches are rollouts of the current policy

Each has what `llm_jax.train.loop.train` reads: `train_iterator()` (grain, checkpointable),
`eval_iterator()`, `token_bytes`, `tokenizer`, and, where the data needs the model,
`attach(training, state)` (called once before the first step), `device_batch(state, local)`
(PPO: the batch depends on the policy) and `evaluate(state)`.
"""

from __future__ import annotations

from typing import Any

from llm_jax.config import Config
from llm_jax.errors import UserError
from llm_jax.train.data import TrainingData
from llm_jax.train.preference_data import PreferenceData
from llm_jax.train.prompt_data import PromptData
from llm_jax.train.sft_data import SftData


def training_data(config: Config) -> Any:
    """The data object for `config.train.objective`."""
    objective = config.train.objective
    if objective == "lm":
        return TrainingData(config)
    if not config.post.data:
        raise UserError(f"train.objective={objective} reads post.data (JSONL records); set it")
    if objective == "sft":
        return SftData(config)
    if objective in ("dpo", "reward"):
        return PreferenceData(config)
    return PromptData(config)
