"""Which parameters a run trains: all of them, or (`model.lora.rank`) only the adapters and
the objective's head, the frozen rest never differentiated nor seen by the optimizer.

The split is by path in the nested parameter dict, so `merge(*split(params))` is `params`
and the optimizer's state has the adapters' tree shape alone.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import traverse_util

from llm_jax.config import Config
from llm_jax.model.heads import HEAD_NAMES
from llm_jax.model.lora import is_adapter


def is_trainable(path: tuple[str, ...]) -> bool:
    """Under LoRA: an adapter matrix, or the reward model's / critic's head."""
    return path[0] in HEAD_NAMES or any(is_adapter(name) for name in path)


def split(params: dict) -> tuple[dict, dict]:
    """(trained, frozen) nested dicts of the adapted tree."""
    flat = traverse_util.flatten_dict(params)
    trained = {path: leaf for path, leaf in flat.items() if is_trainable(path)}
    frozen = {path: leaf for path, leaf in flat.items() if not is_trainable(path)}
    return traverse_util.unflatten_dict(trained), traverse_util.unflatten_dict(frozen)


def merge(trained: dict, frozen: dict) -> dict:
    return traverse_util.unflatten_dict({**traverse_util.flatten_dict(frozen),
                                         **traverse_util.flatten_dict(trained)})


def trained_params(config: Config, params: Any) -> Any:
    """What the optimizer updates: the adapters (and head) under LoRA, else everything."""
    return split(params)[0] if config.model.lora.rank else params


def describe(config: Config, params: dict) -> str:
    """One line for the run's log: how much of the model LoRA trains."""
    trained, frozen = split(params)
    count = lambda tree: sum(leaf.size for leaf in jax.tree.leaves(tree))  # noqa: E731
    lora = config.model.lora
    base = "" if lora.quantize == "none" else f", the base stored as {lora.quantize}"
    return (f"LoRA rank {lora.rank} on {lora.targets}: training {count(trained):,} parameters; "
            f"{count(frozen):,} stored values frozen{base}")
