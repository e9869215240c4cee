"""A post-training task whose answers can be checked, built offline in seconds: reversing a
word of 3 to 5 random letters ("abc" -> "cba").

SFT records ask for the reversal; preference records pair it (chosen) with a near miss
(rejected), so a preference is right or wrong by construction, with no labeller and no data
download. The tokenizer is a SentencePiece BPE trained with exactly the vocabulary its text
needs, so it has no merges: every letter is one token, and `<|im_start|>` / `<|im_end|>` are
one each.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path
from typing import Iterable, Iterator, Sequence

VOCAB = 299  # 256 bytes + 4 specials + 2 chat tokens + the characters below: no merges


def words(count: int = 3000, seed: int = 0) -> list[str]:
    """Distinct random lowercase words of 3 to 5 letters, in random order."""
    rng = random.Random(seed)
    out = sorted({"".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 5)))
                  for _ in range(count)})
    rng.shuffle(out)
    return out


def near_miss(word: str) -> str:
    """A wrong answer close to the right one: the reversal with two letters swapped, or the
    word itself when swapping changes nothing."""
    answer = word[::-1]
    for i in range(len(answer) - 1):
        wrong = answer[:i] + answer[i + 1] + answer[i] + answer[i + 2:]
        if wrong != answer:
            return wrong
    return word if word != answer else word + word[0]


def wrong_last_letter(word: str) -> str:
    """The reversal with its last letter changed: a mistake a reward model can learn to see
    from the end of the reply."""
    answer = word[::-1]
    return answer[:-1] + chr((ord(answer[-1]) - ord("a") + 1) % 26 + ord("a"))


def sft_records(vocabulary: Sequence[str]) -> Iterator[dict]:
    for word in vocabulary:
        yield {"prompt": word, "completion": word[::-1]}


def preference_records(vocabulary: Sequence[str]) -> Iterator[dict]:
    for word in vocabulary:
        yield {"prompt": word, "chosen": word[::-1], "rejected": near_miss(word)}


def write_jsonl(path: Path, records: Iterable[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return path


def train_chat_tokenizer(model_file: Path) -> Path:
    from llm_jax.data.tokenizer_training import train_tokenizer

    lines = ["user", "assistant", "system"] + words(500, seed=99) + list(string.ascii_lowercase)
    return train_tokenizer(lines, model_file, VOCAB)
