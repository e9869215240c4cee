"""Text requests -> token requests, split the way lm-evaluation-harness splits them.

The context and continuation are tokenized together and the continuation is what follows the
context's own tokens, so a word is never split differently at the seam than in running text;
the context's trailing whitespace moves to the continuation, where word-piece tokenizers
attach it. Every context starts with a prefix token (BOS, or EOS where there is no BOS) so
even the first word of a text has something to be predicted from.
"""

from __future__ import annotations

from llm_jax.data.tokenizer import Tokenizer
from llm_jax.errors import UserError
from llm_jax.eval.loglikelihood import Request


def prefix_id(tokenizer: Tokenizer) -> int:
    """The token that every scored text is conditioned on."""
    for candidate in (tokenizer.bos_id, tokenizer.eos_id):
        if candidate is not None:
            return candidate
    raise UserError("the tokenizer has neither a BOS nor an EOS token to start texts with")


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> Request:
    """(context tokens, continuation tokens) for scoring `continuation` after `context`."""
    stripped = context.rstrip()
    continuation = context[len(stripped):] + continuation
    prefix = [prefix_id(tokenizer)]
    context_ids = prefix + tokenizer.encode(stripped)
    whole = prefix + tokenizer.encode(stripped + continuation)
    split = len(context_ids)
    if whole[:split] != context_ids or split >= len(whole):
        # The seam merged into one token: score from the first token that differs.
        split = next((i for i, (a, b) in enumerate(zip(context_ids, whole)) if a != b),
                     min(split, len(whole) - 1))
        split = max(1, min(split, len(whole) - 1))
    return whole[:split], whole[split:]
