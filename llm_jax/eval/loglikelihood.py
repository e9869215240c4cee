"""Log-likelihood of continuations given contexts: the one primitive behind every scored eval.

Requests are (context tokens, continuation tokens). The model reads the concatenation (cut
from the left to its context length) and we sum the log-probabilities of the continuation's
tokens, and record whether each was the argmax (lm-evaluation-harness' `is_greedy`).
Requests are sorted by length and batched into a few padded shapes, so the forward pass
compiles once per length bucket; right padding never changes earlier logits (causal).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from llm_jax.config import ModelConfig
from llm_jax.infer.host_arrays import global_batch, to_host
from llm_jax.infer.placement import Placement
from llm_jax.model import Transformer
from llm_jax.parallel.sharding import sharding_context

Request = tuple[Sequence[int], Sequence[int]]  # (context, continuation) token ids


@dataclasses.dataclass(frozen=True)
class Score:
    logprob: float
    is_greedy: bool


def _bucket(length: int, smallest: int, largest: int) -> int:
    size = smallest
    while size < length:
        size *= 2
    return min(size, largest)


class Scorer:
    """Scores requests with one model; `max_length` defaults to the model's context. With a
    `placement` (the mesh the params are sharded on) batches are split over its data-parallel
    axes, padded to a multiple of them."""

    def __init__(self, config: ModelConfig, params: Any, batch_size: int = 8,
                 max_length: int | None = None, min_bucket: int = 32,
                 placement: Placement | None = None):
        self.config, self.params = config, params
        self.placement = placement
        self.rows = batch_size if placement is None else (
            -(-batch_size // placement.batch_multiple) * placement.batch_multiple)
        self.max_length = max_length or config.max_seq_len
        self.min_bucket = min(min_bucket, self.max_length)
        model = Transformer(config)

        def token_scores(params, inputs, targets):
            logits = model.apply({"params": params}, inputs)
            logprobs = jax.nn.log_softmax(logits, axis=-1)
            picked = jnp.take_along_axis(logprobs, targets[..., None], axis=-1)[..., 0]
            return picked, jnp.argmax(logits, axis=-1) == targets

        self._token_scores = jax.jit(token_scores)

    def _scores(self, inputs: np.ndarray, targets: np.ndarray) -> tuple[jax.Array, jax.Array]:
        if self.placement is None:
            return self._token_scores(self.params, inputs, targets)
        rows = self.placement.rows
        with sharding_context(self.placement.mesh, self.placement.rules):
            return self._token_scores(self.params, global_batch(inputs, rows),
                                      global_batch(targets, rows))

    def score(self, requests: Sequence[Request]) -> list[Score]:
        """One `Score` per request, in the order given."""
        rows = []
        for context, continuation in requests:
            if not len(continuation):
                raise ValueError("a continuation must have at least one token")
            if not len(context):
                raise ValueError("a context must have at least one token (a BOS or EOS)")
            whole = (list(context) + list(continuation))[-(self.max_length + 1):]
            rows.append((whole[:-1], whole[1:], min(len(continuation), len(whole) - 1)))
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        results: list[Score | None] = [None] * len(rows)
        for start in range(0, len(order), self.rows):
            batch = order[start:start + self.rows]
            width = _bucket(len(rows[batch[0]][0]), self.min_bucket, self.max_length)
            inputs = np.zeros((self.rows, width), np.int32)
            targets = np.zeros((self.rows, width), np.int32)
            for slot, i in enumerate(batch):
                inp, tgt, _ = rows[i]
                inputs[slot, :len(inp)], targets[slot, :len(tgt)] = inp, tgt
            picked, greedy = (to_host(a) for a in self._scores(inputs, targets))
            for slot, i in enumerate(batch):
                length, scored = len(rows[i][0]), rows[i][2]
                span = slice(length - scored, length)
                results[i] = Score(float(picked[slot, span].astype(np.float64).sum()),
                                   bool(greedy[slot, span].all()))
        return results  # type: ignore[return-value]


def rolling_requests(tokens: Sequence[int], prefix: int, window: int,
                     stride: int | None = None) -> list[Request]:
    """Requests that together score every token of a long sequence exactly once.

    The first window reads `prefix` (a BOS or EOS) and the first `window - 1` tokens and scores
    `window` tokens; each later window scores the next `stride` tokens (default `window`: disjoint
    windows, as lm-evaluation-harness' rolling log-likelihood) after as much preceding text as
    fits, so smaller strides give every token more context at more cost.
    """
    stride = min(stride or window, window)
    sequence = [prefix] + list(tokens)
    requests: list[Request] = []
    end = min(window, len(tokens))  # tokens[:end] are scored
    if end:
        requests.append(([prefix], list(tokens[:end])))
    while end < len(tokens):
        new_end = min(end + stride, len(tokens))
        # Predicting tokens[end:new_end] reads sequence[new_end - window : new_end].
        start = max(0, new_end - window)
        requests.append((sequence[start:end + 1], list(tokens[end:new_end])))
        end = new_end
    return requests


def total_logprob(scorer: Scorer, documents: Iterable[Sequence[int]], prefix: int,
                  window: int | None = None, stride: int | None = None) -> list[float]:
    """Rolling log-likelihood of each token document, batched across documents."""
    window = window or scorer.max_length
    documents = list(documents)
    owners, requests = [], []
    for doc_index, tokens in enumerate(documents):
        for request in rolling_requests(tokens, prefix, window, stride):
            owners.append(doc_index)
            requests.append(request)
    totals = [0.0] * len(documents)
    for owner, score in zip(owners, scorer.score(requests)):
        totals[owner] += score.logprob
    return totals
