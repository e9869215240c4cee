"""Instruction records -> conversations (lists of {role, content} messages).

Recognized by their fields, in this order:

- `messages`: [{role, content}, ...] with roles system / user / assistant (chat data, TRL's
  conversational format);
- `instruction` + `instances`: Alpaca's seed tasks, one conversation per instance;
- `instruction` (+ optional `input`) + `output`: Alpaca;
- `prompt` + `completion`: prompt/completion pairs;
- `question` + `answer`: GSM8K-style problems.

For PPO, a record gives a prompt (the conversation up to the reply to be generated) and keeps
the record itself, so a programmatic reward can compare against its reference answer.
"""

from __future__ import annotations

from typing import Any

from llm_jax.data.chat_format import ROLES, Message
from llm_jax.data.records import RecordError, text_field

KINDS = ("messages | instruction+output | instruction+instances | prompt+completion | "
         "question+answer")


def parse_messages(value: Any) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise RecordError("missing_fields", "'messages' must be a non-empty list")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise RecordError("missing_fields", f"message {i} needs 'role' and 'content'")
        if message["role"] not in ROLES:
            raise RecordError("bad_role", f"message {i} has role {message['role']!r}, not one "
                              f"of {list(ROLES)}")
        if not isinstance(message["content"], str):
            raise RecordError("missing_fields", f"message {i} content is not text")
        out.append({"role": message["role"], "content": message["content"]})
    return out


def _user_text(instruction: str, extra: str) -> str:
    return f"{instruction}\n\n{extra}" if extra.strip() else instruction


def _pair(prompt: str, reply: str) -> list[Message]:
    if not reply.strip():
        raise RecordError("empty_completion", "the reply is empty")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]


def conversations(value: dict[str, Any]) -> list[list[Message]]:
    """Every conversation a record holds, each with at least one non-empty assistant turn."""
    if "messages" in value:
        messages = parse_messages(value["messages"])
        replies = [m for m in messages if m["role"] == "assistant"]
        if not replies:
            raise RecordError("missing_fields", "no assistant message to train on")
        if any(not m["content"].strip() for m in replies):
            raise RecordError("empty_completion", "an assistant message is empty")
        return [messages]
    if "instruction" in value and "instances" in value:
        instruction = text_field(value, "instruction")
        instances = value["instances"]
        if not isinstance(instances, list) or not instances:
            raise RecordError("missing_fields", "'instances' must be a non-empty list")
        out = []
        for instance in instances:
            if not isinstance(instance, dict):
                raise RecordError("missing_fields", "an instance is not an object")
            extra = text_field(instance, "input", allow_empty=True) if "input" in instance else ""
            out.append(_pair(_user_text(instruction, extra),
                             text_field(instance, "output", allow_empty=True)))
        return out
    if "instruction" in value:
        extra = text_field(value, "input", allow_empty=True) if "input" in value else ""
        return [_pair(_user_text(text_field(value, "instruction"), extra),
                      text_field(value, "output", allow_empty=True))]
    if "prompt" in value:
        return [_pair(text_field(value, "prompt"),
                      text_field(value, "completion", allow_empty=True))]
    if "question" in value:
        return [_pair(text_field(value, "question"), text_field(value, "answer", allow_empty=True))]
    raise RecordError("missing_fields", f"expected one of {KINDS}; got fields {sorted(value)}")


def prompt_messages(value: dict[str, Any]) -> list[Message]:
    """The conversation to reply to (PPO prompts): a reply in the record, if any, is dropped."""
    if "messages" in value:
        messages = parse_messages(value["messages"])
        while messages and messages[-1]["role"] == "assistant":
            messages.pop()
        if not messages:
            raise RecordError("missing_fields", "no message before the assistant's reply")
        return messages
    if "instruction" in value:
        extra = text_field(value, "input", allow_empty=True) if "input" in value else ""
        return [{"role": "user", "content": _user_text(text_field(value, "instruction"), extra)}]
    for key in ("prompt", "question"):
        if key in value:
            return [{"role": "user", "content": text_field(value, key)}]
    raise RecordError("missing_fields",
                      f"expected messages, instruction, prompt or question; got {sorted(value)}")
