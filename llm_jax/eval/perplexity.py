"""Perplexity and bits per byte of a model on documents.

Each document is scored in full by rolling windows (`loglikelihood.rolling_requests`).
Token perplexity depends on the tokenizer; bits per byte and word perplexity do not, so they
compare models with different vocabularies. The formulas are lm-evaluation-harness'
(`bits_per_byte` = -sum log p / bytes / ln 2, words split on whitespace runs).
"""

from __future__ import annotations

import math
import re
from typing import Sequence

from llm_jax.data.tokenizer import Tokenizer
from llm_jax.eval.encoding import prefix_id
from llm_jax.eval.loglikelihood import Scorer, total_logprob


def count_words(text: str) -> int:
    return len(re.split(r"\s+", text))


def evaluate_perplexity(scorer: Scorer, tokenizer: Tokenizer, documents: Sequence[str],
                        window: int | None = None, stride: int | None = None) -> dict[str, float]:
    """Totals and the per-token, per-word and per-byte scores over all documents."""
    tokens = [tokenizer.encode(text) for text in documents]
    logprob = sum(total_logprob(scorer, tokens, prefix_id(tokenizer), window, stride))
    n_tokens = sum(len(t) for t in tokens)
    n_bytes = sum(len(text.encode("utf-8")) for text in documents)
    n_words = sum(count_words(text) for text in documents)
    return {
        "documents": len(documents),
        "tokens": n_tokens,
        "bytes": n_bytes,
        "words": n_words,
        "loglikelihood": logprob,
        "token_perplexity": math.exp(-logprob / max(n_tokens, 1)),
        "word_perplexity": math.exp(-logprob / max(n_words, 1)),
        "byte_perplexity": math.exp(-logprob / max(n_bytes, 1)),
        "bits_per_byte": -logprob / max(n_bytes, 1) / math.log(2),
    }
