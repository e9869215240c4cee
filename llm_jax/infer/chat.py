"""Chat prompts: the tokenizer's own template when it has one, ChatML otherwise.

Our SFT data is formatted as ChatML (`<|im_start|>role\\n...<|im_end|>\\n`), so a model tuned
here expects the same framing at generation time, ending with an open assistant turn.
"""

from __future__ import annotations

from llm_jax.data.tokenizer import Tokenizer

CHATML_END = "<|im_end|>"


def chatml(messages: list[dict[str, str]]) -> str:
    """ChatML turns followed by the start of the assistant's reply."""
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}{CHATML_END}\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


def chat_prompt(tokenizer: Tokenizer, messages: list[dict[str, str]]) -> tuple[str, bool, tuple[str, ...]]:
    """(prompt text, whether to prepend BOS, stop strings) for a conversation.

    A Hugging Face template writes its own BOS text, so none is added; ChatML turns end at
    `<|im_end|>`, which is a stop string because our tokenizers need not have it as one id.
    """
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(messages), False, ()
    return chatml(messages), True, (CHATML_END,)
