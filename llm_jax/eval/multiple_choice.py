"""Multiple-choice accuracy by log-likelihood, with `acc` and `acc_norm` as lm-evaluation-harness
defines them.

Each choice is scored as the continuation `target_delimiter + choice` of the question.
`acc`: the most likely choice is the gold one. `acc_norm`: the same after dividing each
log-likelihood by the choice's length in characters (lm-evaluation-harness 0.4 divides by
`len(choice)`, which is the byte length for ASCII text), so long answers are not penalized
for having more tokens.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from llm_jax.data.readers import ReadProblems, Record, RecordError, load_jsonl
from llm_jax.data.tokenizer import Tokenizer
from llm_jax.errors import UserError
from llm_jax.eval.encoding import encode_pair
from llm_jax.eval.loglikelihood import Scorer

CONTEXT_FIELDS = ("query", "question", "context")
GOLD_FIELDS = ("gold", "label", "answer")


@dataclasses.dataclass(frozen=True)
class ChoiceExample:
    context: str
    choices: list[str]
    gold: int


def _field(value: dict[str, Any], names: Sequence[str]) -> Any:
    for name in names:
        if name in value:
            return value[name]
    raise RecordError("missing_fields", f"none of the fields {', '.join(names)}")


def _example(record: Record) -> ChoiceExample:
    choices = _field(record.value, ("choices",))
    if not isinstance(choices, list) or not choices:
        raise RecordError("missing_fields", "'choices' is not a list of choices")
    gold = _field(record.value, GOLD_FIELDS)
    if isinstance(gold, bool) or not isinstance(gold, (int, str)) or not str(gold).isdigit():
        raise RecordError("bad_gold", f"gold {gold!r} is not a choice's index")
    if int(gold) >= len(choices):
        raise RecordError("bad_gold", f"gold index {gold} is not one of the {len(choices)} choices")
    return ChoiceExample(str(_field(record.value, CONTEXT_FIELDS)), [str(c) for c in choices],
                         int(gold))


def load_choice_examples(path: str | Path, limit: int | None = None,
                         problems: ReadProblems | None = None) -> list[ChoiceExample]:
    """JSONL lines {"query": str, "choices": [str, ...], "gold": int}; unusable lines are
    skipped and added to `problems` (`llm_jax.data.readers`' policy)."""
    return load_jsonl(path, _example, "multiple-choice data", limit, problems)


def _mean_and_stderr(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    stderr = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else 0.0
    return mean, stderr


def evaluate_multiple_choice(scorer: Scorer, tokenizer: Tokenizer,
                             examples: Sequence[ChoiceExample],
                             target_delimiter: str = " ") -> dict[str, float]:
    if not examples:
        raise UserError("no multiple-choice examples to evaluate")
    requests = [encode_pair(tokenizer, ex.context, target_delimiter + choice)
                for ex in examples for choice in ex.choices]
    scores = iter(scorer.score(requests))
    acc, acc_norm = [], []
    for ex in examples:
        lls = np.array([next(scores).logprob for _ in ex.choices])
        lengths = np.array([float(len(choice)) for choice in ex.choices])
        acc.append(float(np.argmax(lls) == ex.gold))
        acc_norm.append(float(np.argmax(lls / lengths) == ex.gold))
    (acc_mean, acc_err), (norm_mean, norm_err) = _mean_and_stderr(acc), _mean_and_stderr(acc_norm)
    return {"examples": len(examples), "acc": acc_mean, "acc_stderr": acc_err,
            "acc_norm": norm_mean, "acc_norm_stderr": norm_err}
