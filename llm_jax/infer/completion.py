"""Text in, text out: prompts are encoded, generated in one batch, decoded and cut at stops."""

from __future__ import annotations

import dataclasses
from typing import Sequence

from llm_jax.data.tokenizer import Tokenizer
from llm_jax.errors import UserError
from llm_jax.infer.chat import chat_prompt
from llm_jax.infer.generator import Generator
from llm_jax.infer.sampling import SamplingOptions


@dataclasses.dataclass(frozen=True)
class Completion:
    """One prompt's continuation and why it ended: `eos`, `stop` (a stop string) or `length`."""

    text: str
    tokens: list[int]
    finish_reason: str


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the earliest stop string (excluded), and whether one was found."""
    cuts = [text.find(s) for s in stop if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


def continuation_text(tokenizer: Tokenizer, prompt: Sequence[int], new: Sequence[int]) -> str:
    """The text that `new` adds after `prompt`.

    Decoding the new tokens alone would lose the space that SentencePiece and word-level
    tokenizers attach to a word, so the prompt is decoded with them and its text removed.
    """
    before = tokenizer.decode(prompt)
    after = tokenizer.decode(list(prompt) + list(new))
    return after[len(before):] if after.startswith(before) else tokenizer.decode(new)


def encode_prompts(tokenizer: Tokenizer, prompts: Sequence[str], chat: bool = False,
                   system: str | None = None,
                   template: str = "auto") -> tuple[list[list[int]], tuple[str, ...]]:
    """Token prompts (BOS first where the tokenizer has one) and the stop strings chat adds;
    chat prompts are framed by `template` (the run's `post.template`)."""
    encoded, extra_stop = [], ()
    for i, prompt in enumerate(prompts):
        if not prompt.strip():
            raise UserError(f"prompt {i} is empty: give some text to continue")
        if chat:
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt}]
            ids, extra_stop = chat_prompt(tokenizer, messages, template)
            encoded.append(ids)
        else:
            encoded.append(tokenizer.encode(prompt, bos=True))
    return encoded, extra_stop


def complete(generator: Generator, tokenizer: Tokenizer, prompts: Sequence[str],
             options: SamplingOptions, chat: bool = False, system: str | None = None,
             max_prompt_tokens: int | None = None, template: str = "auto") -> list[Completion]:
    """Continuations of text prompts (in chat mode, replies to user messages framed by
    `template`, the chat template the model was tuned with).

    `max_prompt_tokens` keeps only the end of longer prompts (benchmarks with long few-shot
    prefixes); without it a prompt that does not fit the context is an error.
    """
    encoded, chat_stop = encode_prompts(tokenizer, prompts, chat, system, template)
    if max_prompt_tokens:
        encoded = [tokens[-max_prompt_tokens:] for tokens in encoded]
    stop = tuple(options.stop) + chat_stop
    eos = set(tokenizer.eos_ids)

    def should_stop(row: int, tokens: list[int]) -> bool:
        return cut_at_stop(continuation_text(tokenizer, encoded[row], tokens), stop)[1]

    results = generator.generate(encoded, options, should_stop if stop else None)
    completions = []
    for prompt, tokens in zip(encoded, results):
        ended = bool(tokens) and tokens[-1] in eos
        body = tokens[:-1] if ended else tokens
        text, stopped = cut_at_stop(continuation_text(tokenizer, prompt, body), stop)
        reason = "stop" if stopped else "eos" if ended else "length"
        completions.append(Completion(text=text, tokens=body, finish_reason=reason))
    return completions
