"""lm-evaluation-harness adapter: our checkpoints as the `llm_jax` model of `lm_eval`.

Importing this module registers the model, after which
`lm_eval.simple_evaluate(model="llm_jax", model_args="checkpoint=DIR", ...)` works.
lm-eval 0.4 finds models only in its own table or among classes registered by modules that
are already imported (it reads no entry points), so the command line goes through
`python -m llm_jax.eval.lm_eval_main`, which is `lm_eval` with this module imported first.

The three request types reuse our own evaluation code, so a harness task and `llm-jax eval`
on the same data give the same numbers.
"""

from __future__ import annotations

from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import normalize_gen_kwargs

from llm_jax.eval.encoding import encode_pair, prefix_id
from llm_jax.eval.loglikelihood import Scorer, total_logprob
from llm_jax.infer.completion import complete
from llm_jax.infer.loading import load_model
from llm_jax.infer.sampling import SamplingOptions


@register_model("llm_jax", "llm-jax")
class LlmJaxLM(LM):
    """`--model_args checkpoint=DIR[,max_length=N,max_gen_toks=N,seed=S]`."""

    def __init__(self, checkpoint: str, batch_size: int | str | None = 8,
                 max_length: int | None = None, max_gen_toks: int = 256, seed: int = 0,
                 **_: Any):  # lm-eval also passes device and max_batch_size, unused here
        super().__init__()
        self.model = load_model(checkpoint)
        self.tokenizer = self.model.tokenizer
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8
        self.max_length = int(max_length or self.model.config.model.max_seq_len)
        self.max_gen_toks = int(max_gen_toks)
        self.seed = int(seed)
        self.scorer = Scorer(self.model.config.model, self.model.params,
                             batch_size=self.batch_size, max_length=self.max_length)
        self.generator = self.model.generator()

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = [encode_pair(self.tokenizer, context, continuation)
                 for context, continuation in (request.args for request in requests)]
        return [(score.logprob, score.is_greedy) for score in self.scorer.score(pairs)]

    def loglikelihood_rolling(self, requests) -> list[float]:
        documents = [self.tokenizer.encode(request.args[0]) for request in requests]
        return total_logprob(self.scorer, documents, prefix_id(self.tokenizer), self.max_length)

    def generate_until(self, requests) -> list[str]:
        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(repr(sorted(request.args[1].items())), []).append(i)
        for indices in groups.values():
            kwargs = normalize_gen_kwargs(requests[indices[0]].args[1], self.max_gen_toks)
            options = SamplingOptions(
                max_new_tokens=int(kwargs["max_gen_toks"]),
                temperature=float(kwargs.get("temperature", 0.0)) if kwargs["do_sample"] else 0.0,
                top_k=int(kwargs.get("top_k") or 0), top_p=float(kwargs.get("top_p") or 1.0),
                seed=self.seed, stop=tuple(kwargs["until"]))
            room = max(1, self.max_length - options.max_new_tokens)
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start:start + self.batch_size]
                completions = complete(self.generator, self.tokenizer,
                                       [requests[i].args[0] for i in batch], options,
                                       max_prompt_tokens=room)
                for i, completion in zip(batch, completions):
                    results[i] = completion.text
        return results  # type: ignore[return-value]

    @property
    def tokenizer_name(self) -> str:
        return type(self.tokenizer).__name__
