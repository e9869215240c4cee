"""Preference records -> (prompt conversation, chosen reply, rejected reply).

Two shapes are read:

- `{prompt, chosen, rejected}`: the prompt as text or as messages, each reply as text or as a
  list of messages whose last one is the assistant's reply (TRL's conversational format);
- `{chosen, rejected}` full dialogues, as in Anthropic's HH-RLHF: both texts repeat the whole
  conversation ("\\n\\nHuman: ...\\n\\nAssistant: ..."), and the prompt is everything up to
  the last "\\n\\nAssistant:" that both share. With a chat template the dialogue is parsed
  into user and assistant turns; without one (`post.template=none`) it stays text as it is.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

from llm_jax.data.chat_format import Message
from llm_jax.data.instructions import parse_messages
from llm_jax.data.records import RecordError, text_field

HH_ASSISTANT = "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    prompt: list[Message]
    chosen: str
    rejected: str


def split_hh_dialogues(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(shared prompt ending in "\\n\\nAssistant:", chosen reply, rejected reply)."""
    shared = os.path.commonprefix([chosen, rejected])
    cut = shared.rfind(HH_ASSISTANT)
    if cut < 0:
        raise RecordError("no_shared_prompt",
                          "chosen and rejected share no prefix ending in '\\n\\nAssistant:'")
    cut += len(HH_ASSISTANT)
    return chosen[:cut], chosen[cut:], rejected[cut:]


def hh_turns(dialogue: str) -> list[Message]:
    """"\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:" -> user/assistant
    messages; the open assistant turn at the end is dropped."""
    parts = _HH_TURN.split(dialogue)
    if parts[0].strip():
        raise RecordError("bad_dialogue", "text before the first '\\n\\nHuman:'")
    messages = []
    for speaker, text in zip(parts[1::2], parts[2::2]):
        messages.append({"role": "user" if speaker == "Human" else "assistant",
                         "content": text.strip()})
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    if not messages or messages[-1]["role"] != "user":
        raise RecordError("bad_dialogue", "the prompt does not end with a human turn")
    return messages


def _reply(value: Any, key: str) -> str:
    """A reply given as text, or as messages ending with the assistant's."""
    if isinstance(value, list):
        messages = parse_messages(value)
        if messages[-1]["role"] != "assistant":
            raise RecordError("missing_fields", f"'{key}' does not end with an assistant message")
        return messages[-1]["content"]
    if not isinstance(value, str):
        raise RecordError("missing_fields", f"'{key}' must be text or a list of messages")
    return value


def preference_pair(value: dict[str, Any], chat: bool = True) -> PreferencePair:
    """One pair; `chat` says whether a chat template will frame the turns."""
    for key in ("chosen", "rejected"):
        if key not in value or value[key] is None:
            raise RecordError("missing_fields", f"no '{key}' (fields: {sorted(value)})")
    if "prompt" in value:
        prompt = value["prompt"]
        if isinstance(prompt, list):
            messages = parse_messages(prompt)
        else:
            messages = [{"role": "user", "content": text_field(value, "prompt")}]
        chosen, rejected = _reply(value["chosen"], "chosen"), _reply(value["rejected"], "rejected")
    else:
        chosen, rejected = text_field(value, "chosen"), text_field(value, "rejected")
        text, chosen, rejected = split_hh_dialogues(chosen, rejected)
        if chat:
            messages = hh_turns(text)
            chosen, rejected = chosen.strip(), rejected.strip()
        else:
            messages = [{"role": "user", "content": text}]
    for name, reply in (("chosen", chosen), ("rejected", rejected)):
        if not reply.strip():
            raise RecordError("empty_completion", f"the {name} reply is empty")
    if chosen == rejected:
        raise RecordError("identical_pair", "chosen and rejected are the same")
    return PreferencePair(messages, chosen, rejected)
