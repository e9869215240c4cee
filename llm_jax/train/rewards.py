"""Programmatic rewards for PPO: `ppo.reward=<name>` for a built-in one, or
`ppo.reward=module:function` for any function with the same signature:

    reward(prompts: list[str], completions: list[str], records: list[dict]) -> list[float]

`prompts` are the rendered prompt texts, `completions` the generated replies (without the
end-of-turn marker), `records` the JSON records the prompts came from, so a verifiable task
can check a reply against the record's reference answer.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Sequence

from llm_jax.data.gsm8k_answers import flexible_answer, strict_answer
from llm_jax.errors import UserError

RewardFunction = Callable[[Sequence[str], Sequence[str], Sequence[dict]], Sequence[float]]
ANSWER_FIELDS = ("answer", "completion", "output")


def reference_answer(record: dict[str, Any]) -> str:
    for field in ANSWER_FIELDS:
        if isinstance(record.get(field), str):
            return record[field]
    raise UserError(f"the reward needs a reference answer in one of {list(ANSWER_FIELDS)}; "
                    f"this record has {sorted(record)}")


def exact_match(prompts: Sequence[str], completions: Sequence[str],
                records: Sequence[dict]) -> list[float]:
    """1 when the reply equals the record's answer (surrounding whitespace ignored), else 0."""
    return [float(c.strip() == reference_answer(r).strip())
            for c, r in zip(completions, records)]


def gsm8k(prompts: Sequence[str], completions: Sequence[str],
          records: Sequence[dict]) -> list[float]:
    """1 when the reply's final number equals the "#### n" answer of a GSM8K record."""
    return [float(flexible_answer(c) is not None
                  and flexible_answer(c) == strict_answer(reference_answer(r)))
            for c, r in zip(completions, records)]


BUILTIN: dict[str, RewardFunction] = {"exact_match": exact_match, "gsm8k": gsm8k}


def load_reward_function(spec: str) -> RewardFunction:
    """A built-in reward by name, or `module:function`."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise UserError(f"ppo.reward={spec!r} is neither a reward model checkpoint, a built-in "
                        f"reward ({', '.join(BUILTIN)}) nor module:function")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise UserError(f"ppo.reward={spec!r} cannot be loaded: {err}") from None
    if not callable(function):
        raise UserError(f"ppo.reward={spec!r} is not a function")
    return function
