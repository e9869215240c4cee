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
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

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


def _field(record: dict, names: Sequence[str], where: str):
    for name in names:
        if name in record:
            return record[name]
    raise UserError(f"{where} has none of the fields {', '.join(names)}")


def load_choice_examples(path: str | Path, limit: int | None = None) -> list[ChoiceExample]:
    """JSONL lines {"query": str, "choices": [str, ...], "gold": int}."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"multiple-choice data {path} does not exist")
    examples = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        record, where = json.loads(line), f"{path}:{line_no}"
        choices = _field(record, ("choices",), where)
        gold = int(_field(record, GOLD_FIELDS, where))
        if not 0 <= gold < len(choices):
            raise UserError(f"{where}: gold index {gold} is not one of the {len(choices)} choices")
        examples.append(ChoiceExample(str(_field(record, CONTEXT_FIELDS, where)),
                                      [str(c) for c in choices], gold))
        if limit is not None and len(examples) >= limit:
            break
    return examples


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
