"""The tasks `llm-jax eval` knows by name, each a function of a loaded model and options.

Each task reads its data under `llm_jax.data.readers`' policy and prints (to stderr, as stdout
holds the results) one line saying what it skipped, if anything.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Callable, TypeVar

from llm_jax.data.readers import ReadProblems
from llm_jax.errors import UserError
from llm_jax.eval import gsm8k
from llm_jax.eval.documents import read_documents
from llm_jax.eval.loglikelihood import Scorer
from llm_jax.eval.multiple_choice import evaluate_multiple_choice, load_choice_examples
from llm_jax.eval.perplexity import evaluate_perplexity
from llm_jax.infer.host_arrays import is_main_process
from llm_jax.infer.loading import LoadedModel

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    data: tuple[str, ...] = ()  # files, globs, jsonl:PATH or tfds:NAME[:SPLIT]
    limit: int | None = None  # at most this many documents or examples per source
    batch_size: int = 8
    window: int | None = None  # perplexity: tokens per window (default: the model's context)
    stride: int | None = None  # perplexity: tokens newly scored per window (default: window)
    text_field: str = "text"
    tfds_data_dir: str | None = None
    num_fewshot: int = 0  # gsm8k: worked examples shown before each question
    fewshot_data: str | None = None  # gsm8k: where the worked examples come from
    max_new_tokens: int = 256  # gsm8k: generation budget per answer


def _require_data(task: str, options: EvalOptions) -> tuple[str, ...]:
    if not options.data:
        raise UserError(f"task {task} needs --data (a file, glob, jsonl:PATH or tfds:NAME)")
    return options.data


def _scorer(model: LoadedModel, options: EvalOptions) -> Scorer:
    return Scorer(model.config.model, model.params, batch_size=options.batch_size,
                  placement=model.placement)


def _read(what: str, specs: tuple[str, ...],
          load: Callable[[str, ReadProblems], list[T]]) -> list[T]:
    """`load(spec, problems)` of every spec, then one line on stderr about what was skipped."""
    problems = ReadProblems()
    items = [item for spec in specs for item in load(spec, problems)]
    if problems.skipped and is_main_process():
        print(f"{what}: {problems.describe()}", file=sys.stderr)
    return items


def run_perplexity(model: LoadedModel, options: EvalOptions) -> dict[str, float]:
    documents = _read("perplexity data", _require_data("perplexity", options),
                      lambda spec, problems: read_documents(
                          spec, options.text_field, options.tfds_data_dir, options.limit, problems))
    return evaluate_perplexity(_scorer(model, options), model.tokenizer, documents,
                               options.window, options.stride)


def run_multiple_choice(model: LoadedModel, options: EvalOptions) -> dict[str, float]:
    examples = _read("multiple_choice data", _require_data("multiple_choice", options),
                     lambda path, problems: load_choice_examples(path, options.limit, problems))
    return evaluate_multiple_choice(_scorer(model, options), model.tokenizer, examples)


def run_gsm8k(model: LoadedModel, options: EvalOptions) -> dict[str, float]:
    problems = _read("gsm8k data", _require_data("gsm8k", options),
                     lambda path, skipped: gsm8k.load_problems(path, options.limit, skipped))
    fewshot = []
    if options.num_fewshot:
        if not options.fewshot_data:
            raise UserError("--num-fewshot needs --fewshot-data (e.g. GSM8K's train split)")
        fewshot = _read("gsm8k few-shot data", (options.fewshot_data,),
                        lambda path, skipped: gsm8k.load_problems(path, options.num_fewshot,
                                                                  skipped))
    return gsm8k.evaluate_gsm8k(model.generator(), model.tokenizer, problems, fewshot,
                                options.max_new_tokens, options.batch_size)


TASKS: dict[str, Callable[[LoadedModel, EvalOptions], dict[str, float]]] = {
    "perplexity": run_perplexity,
    "multiple_choice": run_multiple_choice,
    "gsm8k": run_gsm8k,
}


def check_task(name: str) -> None:
    if name not in TASKS:
        raise UserError(f"unknown task '{name}'; tasks: {', '.join(TASKS)}")


def run_task(name: str, model: LoadedModel, options: EvalOptions) -> dict[str, float]:
    check_task(name)
    return TASKS[name](model, options)
