"""The tokenizer of a checkpoint, behind one small interface for generation and evaluation.

A checkpoint's `tokenizer/` holds either our own SentencePiece model (`tokenizer.model`) or the
files of a Hugging Face tokenizer copied by `llm-jax import-hf` (`tokenizer.json`, ...). Both
are wrapped so callers decide explicitly where BOS and EOS go, instead of relying on each
library's defaults.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol, Sequence

from llm_jax.errors import UserError
from llm_jax.train import checkpoint as ckpt

SENTENCEPIECE_FILE = "tokenizer.model"
HF_FILES = ("tokenizer.json", "tokenizer_config.json")


class Tokenizer(Protocol):
    """What generation and evaluation need from a tokenizer."""

    bos_id: int | None
    eos_id: int | None
    eos_ids: tuple[int, ...]  # every id that ends a generation
    pad_id: int
    vocab_size: int
    chat_template: str | None  # the tokenizer's own chat template, if it ships one

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str: ...


def _optional_id(value: int | None) -> int | None:
    return None if value is None or value < 0 else int(value)


class SentencePieceTokenizer:
    """Our trained BPE model (`llm_jax.data.tokenizer.Tokenizer`) behind this interface."""

    chat_template = None

    def __init__(self, model_file: str | Path):
        from llm_jax.data.tokenizer import Tokenizer as BpeTokenizer

        self.bpe = BpeTokenizer.load(model_file)
        self.bos_id = self.bpe.bos_id
        self.eos_id = self.bpe.eos_id
        self.eos_ids = (self.eos_id,)
        self.pad_id = self.bpe.pad_id
        self.vocab_size = self.bpe.vocab_size

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        return self.bpe.encode(text, bos=bos, eos=eos)

    def decode(self, ids: Sequence[int]) -> str:
        return self.bpe.decode([int(i) for i in ids])

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        raise UserError("this SentencePiece tokenizer ships no chat template")


class HFTokenizer:
    """A Hugging Face tokenizer directory, loaded with `transformers.AutoTokenizer`."""

    def __init__(self, directory: str | Path):
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise UserError("this checkpoint has a Hugging Face tokenizer; install "
                            "transformers (pip install -e .[hf])") from None
        self.tokenizer = AutoTokenizer.from_pretrained(str(directory))
        self.bos_id = _optional_id(self.tokenizer.bos_token_id)
        self.eos_id = _optional_id(self.tokenizer.eos_token_id)
        self.eos_ids = tuple(sorted(set(
            ([self.eos_id] if self.eos_id is not None else []) + _generation_eos(directory))))
        pad = _optional_id(self.tokenizer.pad_token_id)
        self.pad_id = pad if pad is not None else (self.eos_id or 0)
        self.vocab_size = len(self.tokenizer)
        self.chat_template = getattr(self.tokenizer, "chat_template", None) or None

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = list(self.tokenizer.encode(text, add_special_tokens=False))
        return _with_specials(ids, self.bos_id if bos else None, self.eos_id if eos else None)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True)


def _with_specials(ids: list[int], bos: int | None, eos: int | None) -> list[int]:
    return ([bos] if bos is not None else []) + ids + ([eos] if eos is not None else [])


def _generation_eos(directory: str | Path) -> list[int]:
    """Extra end-of-turn ids from `generation_config.json` (Llama 3 lists several)."""
    path = Path(directory) / "generation_config.json"
    if not path.exists():
        return []
    value = json.loads(path.read_text()).get("eos_token_id")
    values = value if isinstance(value, list) else [value]
    return [int(v) for v in values if v is not None and v >= 0]


def load_tokenizer_dir(directory: str | Path) -> Tokenizer:
    """The tokenizer in `directory`, SentencePiece or Hugging Face by the files present."""
    directory = Path(directory)
    if (directory / SENTENCEPIECE_FILE).exists() and not (directory / "tokenizer.json").exists():
        return SentencePieceTokenizer(directory / SENTENCEPIECE_FILE)
    if any((directory / name).exists() for name in HF_FILES + (SENTENCEPIECE_FILE,)):
        return HFTokenizer(directory)
    raise UserError(f"{directory} holds no tokenizer (expected {SENTENCEPIECE_FILE} or "
                    "tokenizer.json)")


def load_tokenizer(checkpoint: str | Path) -> Tokenizer:
    """The tokenizer saved with a checkpoint (run directory or step directory)."""
    directory = ckpt.tokenizer_dir(checkpoint)
    if not directory.is_dir() or not any(directory.iterdir()):
        raise UserError(
            f"checkpoint {checkpoint} has no tokenizer: expected {directory}/{SENTENCEPIECE_FILE} "
            "(a trained tokenizer) or Hugging Face tokenizer files (llm-jax import-hf copies them)")
    return load_tokenizer_dir(directory)
