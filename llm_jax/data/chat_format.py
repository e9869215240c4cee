"""Chat templates for post-training: conversations -> token ids and a per-token loss weight.

A template renders a conversation as a list of text segments, each marked trained or not, and
encodes them one by one, so the loss weight of every token is known exactly (no character
offsets needed). Trained are the assistant's replies and the marker that ends each reply, so
a tuned model learns both to answer and to stop.

- `chatml`: `<|im_start|>{role}\\n{content}<|im_end|>\\n`, after BOS. Our tokenizers have both
  markers as single tokens; `llm_jax.infer.chat` writes the same text at generation time.
- `llama3`: Meta's Llama 3 header format for imported Llama checkpoints:
  `<|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>`, the
  content stripped of surrounding whitespace as Meta's template does.
- `none`: the turns' texts concatenated (`prompt` + `completion` + EOS), for base models and
  data that carries its own formatting (HH-RLHF's "\\n\\nHuman: ..."). A reply that does not
  begin with whitespace gets one space before it, lm-evaluation-harness's `target_delimiter`:
  joined bare, "tree" + "stone" would read "treestone", and with a tokenizer that keeps the
  word-initial space in its pieces (ours) the reply's first word would be tokenized unlike the
  same word anywhere else in the text.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from llm_jax.errors import UserError

Message = dict[str, str]
ROLES = ("system", "user", "assistant")
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
LLAMA3_TOKENS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")


@dataclasses.dataclass(frozen=True)
class Encoded:
    """Token ids of one example and 1.0 where a token is a training target, else 0.0."""

    tokens: np.ndarray  # int32 [n]
    weights: np.ndarray  # float32 [n]

    def __len__(self) -> int:
        return len(self.tokens)


@dataclasses.dataclass(frozen=True)
class Segment:
    text: str
    trained: bool


def single_token(tokenizer: Any, text: str) -> int | None:
    """The id of `text` when the tokenizer encodes it as exactly one token."""
    ids = tokenizer.encode(text)
    return ids[0] if len(ids) == 1 else None


class ChatTemplate:
    """Renders and encodes conversations; subclasses define the segments."""

    name = ""
    end_marker = ""  # text that closes a reply

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    # -- what a subclass defines
    def turn(self, message: Message) -> list[Segment]:
        raise NotImplementedError

    def reply_start(self) -> list[Segment]:
        """The text that opens the assistant's turn (the end of a generation prompt)."""
        raise NotImplementedError

    def reply(self, content: str) -> list[Segment]:
        """An assistant reply as it follows `reply_start`, with the marker that ends it."""
        raise NotImplementedError

    @property
    def bos(self) -> list[int]:
        bos = self.tokenizer.bos_id
        return [] if bos is None else [int(bos)]

    @property
    def end_ids(self) -> list[int]:
        """Ids appended (trained) after the last reply; the text templates need none."""
        return []

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """Token ids that end a generated reply: the tokenizer's EOS ids and the end marker."""
        ids = set(getattr(self.tokenizer, "eos_ids", ()) or ())
        if self.tokenizer.eos_id is not None:
            ids.add(self.tokenizer.eos_id)
        end = single_token(self.tokenizer, self.end_marker) if self.end_marker else None
        if end is not None:
            ids.add(end)
        return tuple(sorted(int(i) for i in ids))

    # -- shared
    def segments(self, messages: Sequence[Message]) -> list[Segment]:
        out: list[Segment] = []
        for message in messages:
            out.extend(self.turn(message))
        return out

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
        """The conversation as text (without BOS), as a Hugging Face chat template writes it."""
        segments = self.segments(messages) + (self.reply_start() if add_generation_prompt else [])
        return "".join(s.text for s in segments)

    def _encode(self, segments: Sequence[Segment], prefix: Sequence[int] = (),
                suffix: Sequence[int] = ()) -> Encoded:
        tokens, weights = list(prefix), [0.0] * len(prefix)
        for segment in segments:
            if not segment.text:
                continue
            ids = self.tokenizer.encode(segment.text)
            tokens.extend(ids)
            weights.extend([1.0 if segment.trained else 0.0] * len(ids))
        tokens.extend(suffix)
        weights.extend([1.0] * len(suffix))
        return Encoded(np.asarray(tokens, np.int32), np.asarray(weights, np.float32))

    def encode(self, messages: Sequence[Message]) -> Encoded:
        """A whole conversation; every assistant turn is trained."""
        return self._encode(self.segments(messages), self.bos, self.end_ids)

    def encode_prompt(self, messages: Sequence[Message]) -> np.ndarray:
        """A conversation followed by the opening of the assistant's reply: what to generate
        from, and what preference pairs share."""
        return self._encode(self.segments(messages) + self.reply_start(), self.bos).tokens

    def encode_reply(self, content: str) -> Encoded:
        """One assistant reply as it follows `encode_prompt`, all of it trained."""
        return self._encode(self.reply(content), (), self.end_ids)


class ChatML(ChatTemplate):
    name = "chatml"
    end_marker = IM_END

    def turn(self, message: Message) -> list[Segment]:
        trained = message["role"] == "assistant"
        return [Segment(f"{IM_START}{message['role']}\n", False),
                Segment(message["content"], trained), Segment(IM_END, trained),
                Segment("\n", False)]

    def reply_start(self) -> list[Segment]:
        return [Segment(f"{IM_START}assistant\n", False)]

    def reply(self, content: str) -> list[Segment]:
        return [Segment(content, True), Segment(IM_END, True)]


class Llama3(ChatTemplate):
    name = "llama3"
    end_marker = "<|eot_id|>"

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer)
        missing = [t for t in LLAMA3_TOKENS if single_token(tokenizer, t) is None]
        if missing:
            raise UserError(f"post.template=llama3 needs the Llama 3 special tokens, but this "
                            f"tokenizer lacks {missing}; use post.template=chatml or none")

    @property
    def bos(self) -> list[int]:
        return [single_token(self.tokenizer, "<|begin_of_text|>")]

    def turn(self, message: Message) -> list[Segment]:
        header = f"<|start_header_id|>{message['role']}<|end_header_id|>\n\n"
        return [Segment(header, False)] + self.reply(message["content"],
                                                     message["role"] == "assistant")

    def reply_start(self) -> list[Segment]:
        return [Segment("<|start_header_id|>assistant<|end_header_id|>\n\n", False)]

    def reply(self, content: str, trained: bool = True) -> list[Segment]:
        return [Segment(content.strip(), trained), Segment("<|eot_id|>", trained)]


REPLY_DELIMITER = " "  # before a `none` reply that starts with no whitespace of its own


class PlainText(ChatTemplate):
    """No template: each turn's text as it is; the last reply ends with EOS."""

    name = "none"

    def turn(self, message: Message) -> list[Segment]:
        if message["role"] == "assistant":
            return self.reply(message["content"])
        return [Segment(message["content"], False)]

    def reply_start(self) -> list[Segment]:
        return []

    def reply(self, content: str) -> list[Segment]:
        delimiter = "" if not content or content[0].isspace() else REPLY_DELIMITER
        return [Segment(delimiter + content, True)]

    @property
    def end_ids(self) -> list[int]:
        eos = self.tokenizer.eos_id
        return [] if eos is None else [int(eos)]


TEMPLATES = {"chatml": ChatML, "llama3": Llama3, "none": PlainText}


def make_template(name: str, tokenizer: Any) -> ChatTemplate:
    """`auto` picks llama3 when the tokenizer has Llama 3's header tokens, ChatML otherwise
    (its markers are single tokens in our tokenizers, plain text in others)."""
    if name == "auto":
        has_llama3 = all(single_token(tokenizer, t) is not None for t in LLAMA3_TOKENS)
        name = "llama3" if has_llama3 else "chatml"
    if name not in TEMPLATES:
        raise UserError(f"unknown chat template {name!r}; choose one of {list(TEMPLATES)}")
    return TEMPLATES[name](tokenizer)
