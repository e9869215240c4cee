"""GSM8K's final answers, as lm-evaluation-harness' `gsm8k` task reads them: `strict` takes the
number after "#### ", `flexible` the last number in the text. Numbers are compared after
removing commas, dollar signs and a final period. Shared by the evaluation and by the
programmatic reward of RL fine-tuning."""

from __future__ import annotations

import re

STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
NUMBER = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")


def normalize(answer: str) -> str:
    answer = answer.strip().replace(",", "").replace("$", "")
    return answer[:-1] if answer.endswith(".") else answer


def strict_answer(text: str) -> str | None:
    match = STRICT.search(text)
    return normalize(match.group(1)) if match else None


def flexible_answer(text: str) -> str | None:
    matches = NUMBER.findall(text)
    if not matches:
        return None
    return normalize(next(group for group in matches[-1] if group))
