"""Chat prompts as the model was tuned to read them.

A model tuned here expects, at generation time, the framing its SFT data had: the template of
its run (`post.template`), encoded segment by segment exactly as `chat_format` encoded the
training conversations, ending where the assistant's reply starts. An imported model whose
tokenizer brings its own chat template (and was not tuned here with another) uses that one.
"""

from __future__ import annotations

from llm_jax.data.chat_format import make_template
from llm_jax.data.tokenizer import Tokenizer


def chat_prompt(tokenizer: Tokenizer, messages: list[dict[str, str]],
                template: str = "auto") -> tuple[list[int], tuple[str, ...]]:
    """(prompt ids, stop strings) for a conversation under the run's `post.template`.

    A Hugging Face template writes its own BOS text; ChatML's `<|im_end|>` is a stop string
    because a tokenizer need not have it as one id.
    """
    if tokenizer.chat_template and template == "auto":
        return tokenizer.encode(tokenizer.apply_chat_template(messages), bos=False), ()
    chosen = make_template(template, tokenizer)
    stop = (chosen.end_marker,) if chosen.end_marker else ()
    return chosen.encode_prompt(messages).tolist(), stop
