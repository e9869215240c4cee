"""One tokenizer interface for every stage: our SentencePiece BPE model or a Hugging Face
tokenizer (`tokenizer.json`, as `llm-jax import-hf` copies it), chosen by the files present.

Pretraining, post-training, generation and evaluation all read a `Tokenizer`; callers say
explicitly where BOS and EOS go instead of relying on each library's defaults. Training our
own model is `llm_jax.data.tokenizer_training`.

One caveat of SentencePiece itself: it uses U+2581 ("▁") to mark spaces, so that character in
input text decodes as a space.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from llm_jax import storage
from llm_jax.errors import UserError

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
META_SPACE = "\u2581"
SENTENCEPIECE_FILE = "tokenizer.model"
HF_FILE = "tokenizer.json"
# What a Hugging Face tokenizer directory may hold; nothing else is copied with it.
HF_TOKENIZER_FILES = (SENTENCEPIECE_FILE, HF_FILE, "tokenizer_config.json",
                      "special_tokens_map.json", "generation_config.json", "chat_template.jinja")


class Tokenizer(Protocol):
    """What the data pipelines, training, generation and evaluation need from a tokenizer."""

    bos_id: int | None
    eos_id: int | None
    eos_ids: tuple[int, ...]  # every id that ends a generation
    pad_id: int
    vocab_size: int
    chat_template: str | None  # the tokenizer's own chat template, if it ships one
    fingerprint: str  # data encoded with another tokenizer must not be reused

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str], bos: bool = False,
                     eos: bool = False) -> list[list[int]]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def token_to_id(self, piece: str) -> int: ...

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str: ...

    def token_byte_lengths(self) -> np.ndarray: ...

    def save(self, directory: storage.PathLike) -> None: ...


def _piece_bytes(piece: str) -> int:
    """UTF-8 bytes a SentencePiece-style piece stands for (`<0xNN>` byte tokens are one)."""
    if piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
        return 1
    return len(piece.replace(META_SPACE, " ").encode("utf-8"))


class SentencePieceTokenizer:
    """A trained SentencePiece model with the ids the input pipeline and the model rely on."""

    chat_template = None

    def __init__(self, model_proto: bytes) -> None:
        import sentencepiece as spm

        self._proto = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.bos_id, self.eos_id = self._sp.bos_id(), self._sp.eos_id()
        self.pad_id, self.unk_id = self._sp.pad_id(), self._sp.unk_id()
        self.eos_ids = (self.eos_id,)
        self.vocab_size = self._sp.get_piece_size()
        self.fingerprint = hashlib.sha256(model_proto).hexdigest()

    @classmethod
    def load(cls, path: storage.PathLike) -> "SentencePieceTokenizer":
        path = storage.path(path)
        if not path.is_file():
            raise UserError(
                f"no tokenizer at {path}: run `llm-jax tokenizer` (with the same --config) first, "
                "or set tokenizer.path"
            )
        return cls(path.read_bytes())

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        return self._sp.encode(text, add_bos=bos, add_eos=eos)

    def encode_batch(self, texts: Sequence[str], bos: bool = False, eos: bool = False,
                     num_threads: int = -1) -> list[list[int]]:
        """Encodes many texts in SentencePiece's thread pool."""
        return self._sp.encode(list(texts), add_bos=bos, add_eos=eos, num_threads=num_threads)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of the ids; control tokens (bos, eos, pad) decode to nothing."""
        return self._sp.decode([int(i) for i in ids])

    def token_to_id(self, piece: str) -> int:
        index = self._sp.piece_to_id(piece)
        if index == self.unk_id and piece != UNK:
            raise KeyError(f"{piece!r} is not a token of this vocabulary")
        return index

    def id_to_token(self, index: int) -> str:
        return self._sp.id_to_piece(int(index))

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        raise UserError("this SentencePiece tokenizer ships no chat template")

    def token_byte_lengths(self) -> np.ndarray:
        """UTF-8 bytes of text each token stands for (control tokens 0, byte tokens 1)."""
        lengths = np.zeros(self.vocab_size, np.float32)
        specials = {self.bos_id, self.eos_id, self.pad_id, self.unk_id}
        for index in range(self.vocab_size):
            if index not in specials:
                lengths[index] = _piece_bytes(self.id_to_token(index))
        return lengths

    def save(self, directory: storage.PathLike) -> None:
        directory = storage.path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / SENTENCEPIECE_FILE).write_bytes(self._proto)

    def __getstate__(self) -> dict[str, bytes]:
        return {"model_proto": self._proto}

    def __setstate__(self, state: dict[str, bytes]) -> None:
        self.__init__(state["model_proto"])

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer(vocab_size={self.vocab_size}, sha256={self.fingerprint[:12]})"


def _optional_id(value: int | None) -> int | None:
    return None if value is None or value < 0 else int(value)


def _with_specials(ids: list[int], bos: int | None, eos: int | None) -> list[int]:
    return ([bos] if bos is not None else []) + ids + ([eos] if eos is not None else [])


def _generation_eos(directory: Path) -> list[int]:
    """Extra end-of-turn ids from `generation_config.json` (Llama 3 lists several)."""
    path = directory / "generation_config.json"
    if not path.exists():
        return []
    value = json.loads(path.read_text()).get("eos_token_id")
    values = value if isinstance(value, list) else [value]
    return [int(v) for v in values if v is not None and v >= 0]


class HFTokenizer:
    """A Hugging Face tokenizer directory, loaded with `transformers.AutoTokenizer` (which
    reads local files: a `gs://` directory is read from its local copy)."""

    def __init__(self, directory: storage.PathLike):
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise UserError(f"{directory} holds a Hugging Face tokenizer; install "
                            "transformers (pip install -e .[hf])") from None
        self.directory = storage.local_copy(directory)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.directory))
        self.bos_id = _optional_id(self.tokenizer.bos_token_id)
        self.eos_id = _optional_id(self.tokenizer.eos_token_id)
        self.eos_ids = tuple(sorted(set(
            ([self.eos_id] if self.eos_id is not None else []) + _generation_eos(self.directory))))
        pad = _optional_id(self.tokenizer.pad_token_id)
        self.pad_id = pad if pad is not None else (self.eos_id or 0)
        self.vocab_size = len(self.tokenizer)
        self.chat_template = getattr(self.tokenizer, "chat_template", None) or None
        digest = hashlib.sha256()
        for name in self._own_files():
            digest.update(name.encode() + (self.directory / name).read_bytes())
        self.fingerprint = digest.hexdigest()

    def _own_files(self) -> list[str]:
        return [name for name in HF_TOKENIZER_FILES if (self.directory / name).is_file()]

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = list(self.tokenizer.encode(text, add_special_tokens=False))
        return _with_specials(ids, self.bos_id if bos else None, self.eos_id if eos else None)

    def encode_batch(self, texts: Sequence[str], bos: bool = False,
                     eos: bool = False) -> list[list[int]]:
        encoded = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [_with_specials(list(ids), self.bos_id if bos else None,
                               self.eos_id if eos else None) for ids in encoded]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_to_id(self, piece: str) -> int:
        index = self.tokenizer.convert_tokens_to_ids(piece)
        if index is None or index == self.tokenizer.unk_token_id and piece != self.tokenizer.unk_token:
            raise KeyError(f"{piece!r} is not a token of this vocabulary")
        return int(index)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True)

    def token_byte_lengths(self) -> np.ndarray:
        """UTF-8 bytes of text each token stands for; special tokens 0. A byte-level BPE
        (GPT-2, Llama 3) spells each byte as one character; other vocabularies use
        SentencePiece's pieces."""
        backend = json.loads(self.tokenizer.backend_tokenizer.to_str())
        byte_level = "ByteLevel" in json.dumps(backend.get("decoder"))
        specials = set(self.tokenizer.all_special_ids) | {
            index for index, token in self.tokenizer.added_tokens_decoder.items() if token.special}
        pieces = self.tokenizer.convert_ids_to_tokens(list(range(self.vocab_size)))
        lengths = np.zeros(self.vocab_size, np.float32)
        for index, piece in enumerate(pieces):
            if index not in specials and piece is not None:
                lengths[index] = len(piece) if byte_level else _piece_bytes(piece)
        return lengths

    def save(self, directory: storage.PathLike) -> None:
        directory = storage.path(directory)
        if str(directory) == str(self.directory.resolve()):
            return
        directory.mkdir(parents=True, exist_ok=True)
        for name in self._own_files():
            (directory / name).write_bytes((self.directory / name).read_bytes())


def load_tokenizer(path: storage.PathLike) -> Tokenizer:
    """The tokenizer at `path`: a SentencePiece `.model` file, a `tokenizer.json`, or a
    directory holding either (a Hugging Face directory when it has `tokenizer.json`)."""
    path = storage.path(path)
    if path.is_file():
        return HFTokenizer(path.parent) if path.name == HF_FILE else SentencePieceTokenizer.load(path)
    if path.is_dir():
        if (path / HF_FILE).is_file() or (path / "tokenizer_config.json").is_file():
            return HFTokenizer(path)
        if (path / SENTENCEPIECE_FILE).is_file():
            return SentencePieceTokenizer.load(path / SENTENCEPIECE_FILE)
        raise UserError(f"{path} holds no tokenizer (expected {SENTENCEPIECE_FILE} or {HF_FILE})")
    raise UserError(f"no tokenizer at {path}: it does not exist (run `llm-jax tokenizer` first, "
                    "or set tokenizer.path to a .model file, a tokenizer.json or their directory)")
