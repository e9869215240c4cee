"""GSM8K: generate an answer until a stop string, then exact match on the final number.

References end with `#### <number>`. The prompt and stop strings are lm-evaluation-harness'
`gsm8k` task ("Question: ...\\nAnswer:", few-shot examples separated by blank lines). Two
scores, as there: `strict` takes the number after "#### " in the generation, `flexible` the
last number in it. Numbers are compared after removing commas, dollar signs and a final
period.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from llm_jax.data.gsm8k_answers import flexible_answer, strict_answer
from llm_jax.data.readers import ReadProblems, Record, load_jsonl, text_field
from llm_jax.data.tokenizer import Tokenizer
from llm_jax.errors import UserError
from llm_jax.infer.completion import complete
from llm_jax.infer.generator import Generator
from llm_jax.infer.sampling import SamplingOptions

STOP = ("Question:", "</s>", "<|im_end|>")


def _problem(record: Record) -> dict[str, str]:
    return {"question": text_field(record.value, "question"),
            "answer": text_field(record.value, "answer")}


def load_problems(path: str | Path, limit: int | None = None,
                  problems: ReadProblems | None = None) -> list[dict[str, str]]:
    """JSONL lines {"question": str, "answer": str ending in "#### <number>"}; lines without
    both are skipped and added to `problems` (`llm_jax.data.readers`' policy)."""
    return load_jsonl(path, _problem, "GSM8K data", limit, problems)


def prompt(question: str, fewshot: Sequence[dict[str, str]] = ()) -> str:
    shots = "".join(f"Question: {ex['question']}\nAnswer: {ex['answer']}\n\n" for ex in fewshot)
    return f"{shots}Question: {question}\nAnswer:"


def score_generations(generations: Sequence[str], problems: Sequence[dict[str, str]]
                      ) -> dict[str, float]:
    """Exact-match rates of generations against the problems' "#### n" answers."""
    targets = [strict_answer(p["answer"]) for p in problems]
    strict = [strict_answer(g) == t for g, t in zip(generations, targets)]
    flexible = [flexible_answer(g) == t for g, t in zip(generations, targets)]
    n = max(len(problems), 1)
    return {"examples": len(problems), "exact_match_strict": sum(strict) / n,
            "exact_match_flexible": sum(flexible) / n}


def evaluate_gsm8k(generator: Generator, tokenizer: Tokenizer,
                   problems: Sequence[dict[str, str]], fewshot: Sequence[dict[str, str]] = (),
                   max_new_tokens: int = 256, batch_size: int = 8) -> dict[str, float]:
    """Greedy generation, batched, then exact match.

    As in lm-evaluation-harness, prompts longer than the context minus `max_new_tokens` keep
    only their end; `truncated_prompts` counts them.
    """
    if not problems:
        raise UserError("no GSM8K problems to evaluate")
    room = generator.config.max_seq_len - max_new_tokens
    if room < 1:
        raise UserError(f"--max-new-tokens={max_new_tokens} leaves no room for a question in "
                        f"the model's context of {generator.config.max_seq_len} tokens")
    options = SamplingOptions(max_new_tokens=max_new_tokens, stop=STOP)
    prompts = [prompt(p["question"], fewshot) for p in problems]
    truncated = sum(len(tokenizer.encode(text, bos=True)) > room for text in prompts)
    generations = []
    for start in range(0, len(prompts), batch_size):
        completions = complete(generator, tokenizer, prompts[start:start + batch_size], options,
                               max_prompt_tokens=room)
        generations.extend(c.text for c in completions)
    return {**score_generations(generations, problems), "truncated_prompts": truncated}
