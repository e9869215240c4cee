"""lm-evaluation-harness adapter: our checkpoints as the `llm_jax` model of `lm_eval`.

Importing this module registers the model, after which
`lm_eval.simple_evaluate(model="llm_jax", model_args="checkpoint=DIR", ...)` works.
lm-eval 0.4 finds models only in its own table or among classes registered by modules that
are already imported (it reads no entry points), so the command line goes through
`python -m llm_jax.eval.lm_eval_main`, which is `lm_eval` with this module imported first.

Multiple choice and generation reuse our own evaluation code, so a harness task and
`llm-jax eval` on the same data give the same numbers. Rolling log-likelihood is scored as
lm-eval's own `hf` model scores it (its tokenization, prefix token, max length and windows), so
perplexities and bits per byte compare with published lm-eval numbers; `llm-jax eval --task
perplexity` keeps its own sliding window.
"""

from __future__ import annotations

from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import has_bos_prefix, normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from llm_jax.data.tokenizer import HFTokenizer, Tokenizer
from llm_jax.eval.encoding import encode_pair, prefix_id
from llm_jax.eval.loglikelihood import Scorer
from llm_jax.infer.completion import complete
from llm_jax.infer.loading import load_model
from llm_jax.infer.sampling import SamplingOptions


def document_tokens(tokenizer: Tokenizer, text: str) -> list[int]:
    """A document's tokens as lm-eval's `hf` model encodes it: with the Hugging Face
    tokenizer's own special tokens (a Llama tokenizer adds BOS, which lm-eval then scores after
    its prefix BOS) unless the text starts with the prefix token; a SentencePiece tokenizer as
    the one `llm-jax export-hf` writes, which adds BOS."""
    if isinstance(tokenizer, HFTokenizer):
        hf = tokenizer.tokenizer
        special = not has_bos_prefix(text, hf.decode(prefix_id(tokenizer)))
        return list(hf.encode(text, add_special_tokens=special))
    return tokenizer.encode(text, bos=True)


@register_model("llm_jax", "llm-jax")
class LlmJaxLM(LM):
    """`--model_args checkpoint=DIR[,max_length=N,max_gen_toks=N,seed=S,mesh.fsdp=N,...]`:
    `mesh.*` settings place the parameters as `llm-jax eval`'s do (default: fsdp over all
    devices)."""

    def __init__(self, checkpoint: str, batch_size: int | str | None = 8,
                 max_length: int | None = None, max_gen_toks: int = 256, seed: int = 0,
                 **settings: Any):  # lm-eval also passes device and max_batch_size, unused here
        super().__init__()
        mesh = [f"{key}={value}" for key, value in settings.items() if key.startswith("mesh.")]
        self.model = load_model(checkpoint, mesh)
        self.tokenizer = self.model.tokenizer
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8
        self.max_length = int(max_length or self.model.config.model.max_seq_len)
        self.max_gen_toks = int(max_gen_toks)
        self.seed = int(seed)
        self.scorer = Scorer(self.model.config.model, self.model.params,
                             batch_size=self.batch_size, max_length=self.max_length,
                             placement=self.model.placement)
        self.generator = self.model.generator()

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = [encode_pair(self.tokenizer, context, continuation)
                 for context, continuation in (request.args for request in requests)]
        return [(score.logprob, score.is_greedy) for score in self.scorer.score(pairs)]

    def loglikelihood_rolling(self, requests) -> list[float]:
        """lm-eval's windows (`HFLM.loglikelihood_rolling`): disjoint, `max_length` tokens each,
        the first after the prefix token, the last reading as much preceding text as fits."""
        prefix = prefix_id(self.tokenizer)
        owners, windows = [], []
        for index, request in enumerate(requests):
            tokens = document_tokens(self.tokenizer, request.args[0])
            for window in get_rolling_token_windows(tokens, prefix, self.max_length,
                                                    context_len=1):
                owners.append(index)
                windows.append(make_disjoint_window(window))
        totals = [0.0] * len(requests)
        for owner, score in zip(owners, self.scorer.score(windows)):
            totals[owner] += score.logprob
        return totals

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
