"""`llm-jax tokenizer`: a SentencePiece BPE model trained with Llama-style options, and its
Hugging Face export.

Training options and why:

- BPE with `byte_fallback`: any character outside the vocabulary becomes its UTF-8 bytes, so
  nothing maps to <unk> and decode(encode(x)) == x for arbitrary Unicode.
- `split_digits`: numbers are spelled digit by digit (Llama, PaLM), which helps arithmetic.
- identity normalization, `remove_extra_whitespaces=False`, `allow_whitespace_only_pieces`: the
  text is kept byte for byte, runs of spaces and tabs included (code indentation gets pieces).
- no dummy prefix: the first word of a text is encoded as it is written. Llama's tokenizer adds a
  space in front, which `transformers`' fast tokenizer reproduces differently for text that already
  starts with a space; without it the exported tokenizer gives the same ids for every input.
- special tokens: <unk>=0, <s>=1 (bos), </s>=2 (eos), <pad>=3, then `<|im_start|>` and
  `<|im_end|>` (ChatML, for SFT) as user-defined symbols, always encoded as single tokens.
- input sampling: at most `tokenizer.max_sentences` lines, drawn uniformly from the corpus
  (SentencePiece's reservoir sampling), so the corpus may be larger than memory.

One caveat of SentencePiece itself: it uses U+2581 ("▁") to mark spaces, so that character in
input text decodes as a space.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from llm_jax import storage
from llm_jax.data.corpus import INFO_FILE, CorpusSource, corpus_name, curated_dir, settings_hash
from llm_jax.data.mixture import Chained, member_configs
from llm_jax.data.tokenizer import BOS, CHAT_TOKENS, EOS, PAD, UNK, SentencePieceTokenizer
from llm_jax.errors import UserError


def default_model_path(config: Any) -> storage.AnyPath:
    """Where `llm-jax tokenizer` writes: `tokenizer.path`; else, with `data.corpora`, beside
    the shared corpus as `tokenizer-<hash of the tokenizer settings>/tokenizer.model` (every
    run of that corpus and those settings reads it); else `<run_dir>/tokenizer/tokenizer.model`."""
    if config.tokenizer.path:
        return storage.path(config.tokenizer.path)
    if config.data.corpora:
        version = settings_hash(_tokenizer_settings(config))
        return _corpus_home(config) / f"tokenizer-{version}" / "tokenizer.model"
    return storage.path(config.run_dir) / "tokenizer" / "tokenizer.model"


def _corpus_home(config: Any) -> storage.AnyPath:
    """The shared corpus; for a mixture, `<corpora>/mixture-<hash of its members' names>`."""
    if not config.data.mixture:
        return curated_dir(config)
    members = [(corpus_name(m), w) for m, (_, w) in zip(member_configs(config),
                                                          config.data.mixture_members())]
    return storage.path(config.data.corpora) / f"mixture-{settings_hash(members)}"


def _corpora(config: Any) -> list[CorpusSource]:
    """The curated corpora a tokenizer learns from: the corpus, or every mixture member's."""
    members = member_configs(config) if config.data.mixture else [config]
    return [CorpusSource(curated_dir(member)) for member in members]


def _tokenizer_settings(config: Any) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(config.tokenizer).items() if k != "path"}


def training_lines(texts: Iterable[str], max_bytes: int) -> Iterator[str]:
    """Non-empty lines of the texts, each cut to at most `max_bytes` UTF-8 bytes.

    SentencePiece trains on lines ("sentences") and would skip longer ones; newlines themselves
    are left to byte fallback, as in Llama.
    """
    for text in texts:
        for line in text.split("\n"):
            if not line.strip():
                continue
            raw = line.encode("utf-8")
            if len(raw) > max_bytes:
                line = raw[:max_bytes].decode("utf-8", errors="ignore")
            yield line


def train_tokenizer(
    lines: Iterable[str],
    model_path: storage.PathLike,
    vocab_size: int,
    *,
    character_coverage: float = 0.9995,
    max_sentences: int = 2_000_000,
    max_sentence_bytes: int = 4192,
) -> storage.AnyPath:
    """Trains a BPE model on `lines`; writes `model_path` (and `.vocab` beside it) atomically."""
    import sentencepiece as spm

    model_path = storage.path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    counted = _Counter(lines)
    spm.set_random_generator_seed(0)  # the line sample, and so the vocabulary, is reproducible
    with tempfile.TemporaryDirectory(dir=_local_parent(model_path)) as tmp:
        prefix = os.path.join(tmp, "sp")
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(counted),
                model_prefix=prefix,
                model_type="bpe",
                vocab_size=vocab_size,
                character_coverage=character_coverage,
                byte_fallback=True,
                split_digits=True,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                allow_whitespace_only_pieces=True,
                add_dummy_prefix=False,
                split_by_unicode_script=True,
                split_by_whitespace=True,
                unk_id=0, bos_id=1, eos_id=2, pad_id=3,
                unk_piece=UNK, bos_piece=BOS, eos_piece=EOS, pad_piece=PAD,
                user_defined_symbols=list(CHAT_TOKENS),
                input_sentence_size=max_sentences,
                shuffle_input_sentence=True,
                max_sentence_length=max_sentence_bytes,
                num_threads=os.cpu_count() or 1,
                minloglevel=2,
            )
        except RuntimeError as err:
            raise _vocabulary_error(str(err), vocab_size, counted.lines) from None
        storage.put_file(prefix + ".vocab", model_path.with_suffix(".vocab"))
        storage.put_file(prefix + ".model", model_path)
    return model_path


def _local_parent(path: storage.AnyPath) -> Path | None:
    """Where to make a file that becomes `path`: beside it (a rename), or anywhere local for
    a `gs://` path (an upload)."""
    return None if storage.is_remote(path) else path.parent


class _Counter:
    """Passes lines through, counting them, so an error can say how little text there was."""

    def __init__(self, lines: Iterable[str]) -> None:
        self._lines = lines
        self.lines = 0

    def __iter__(self) -> Iterator[str]:
        for line in self._lines:
            self.lines += 1
            yield line


def _vocabulary_error(message: str, vocab_size: int, lines: int) -> UserError:
    too_high = re.search(r"Vocabulary size (?:is )?too high \((\d+)\).*<= (\d+)", message)
    if too_high:
        return UserError(
            f"tokenizer.vocab_size={vocab_size} is larger than this corpus supports "
            f"({lines} lines of text give at most {too_high.group(2)} pieces); set "
            f"tokenizer.vocab_size={too_high.group(2)} or less, or curate more text"
        )
    too_low = re.search(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)", message)
    if too_low:
        return UserError(
            f"tokenizer.vocab_size={vocab_size} is below the {too_low.group(2)} pieces any "
            "vocabulary of this corpus needs (256 bytes, the special tokens and its characters); "
            "raise tokenizer.vocab_size or lower tokenizer.character_coverage"
        )
    if lines == 0:
        return UserError("the tokenizer has no text to train on: the corpus is empty")
    return UserError(f"SentencePiece could not train a tokenizer: {message}")


def export_hf(model_path: storage.PathLike, out_dir: storage.PathLike) -> storage.AnyPath:
    """A Hugging Face tokenizer directory from the .model file: `LlamaTokenizer` (fast, built by
    transformers' own SentencePiece converter), bos added by default, <pad> and the chat tokens
    registered as special tokens. Loads with `transformers.AutoTokenizer` and gives our ids."""
    from transformers import LlamaTokenizer

    out_dir = storage.path(out_dir)
    model = storage.path(model_path).read_bytes()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=_local_parent(out_dir)) as tmp:
        source, target = Path(tmp, "spm"), Path(tmp, "hf")
        source.mkdir()
        (source / "tokenizer.model").write_bytes(model)
        tokenizer = LlamaTokenizer.from_pretrained(
            str(source), unk_token=UNK, bos_token=BOS, eos_token=EOS, pad_token=PAD,
            add_prefix_space=False, add_bos_token=True, add_eos_token=False, legacy=False,
            additional_special_tokens=list(CHAT_TOKENS),
        )
        tokenizer.save_pretrained(str(target))
        (target / "tokenizer.model").write_bytes(model)
        if out_dir.exists():
            storage.remove_tree(out_dir)
        if storage.is_remote(out_dir):
            storage.publish(target, out_dir)
        else:
            os.replace(target, out_dir)
    return out_dir


def train_from_config(config: Any, force: bool = False, progress: bool = True) -> dict[str, Any]:
    """`llm-jax tokenizer`: trains on the curated corpus, exports the HF directory beside the model.

    Skips training when the model exists and was trained on the same corpus with the same
    settings (unless `force`). Returns what it did, also saved as `training.json` beside the model.
    """
    import json
    import time

    from tqdm import tqdm

    started = time.time()
    corpora = _corpora(config)
    source = Chained([(corpus, np.arange(len(corpus))) for corpus in corpora])
    model_path = default_model_path(config)
    record_path = model_path.with_name("training.json")
    infos = b"".join((storage.path(c.directory) / INFO_FILE).read_bytes() for c in corpora)
    settings = {"corpus": hashlib.sha256(infos).hexdigest(), **_tokenizer_settings(config)}
    if not force and model_path.is_file() and record_path.is_file():
        previous = json.loads(record_path.read_text())
        if previous.get("settings") == settings:
            return {**previous, "skipped": True}
    texts = tqdm((source[i] for i in range(len(source))), total=len(source), unit="doc",
                 desc="tokenizer", disable=not progress, mininterval=0.5)
    lines = training_lines(texts, config.tokenizer.max_sentence_bytes)
    train_tokenizer(lines, model_path, config.tokenizer.vocab_size,
                    character_coverage=config.tokenizer.character_coverage,
                    max_sentences=config.tokenizer.max_sentences,
                    max_sentence_bytes=config.tokenizer.max_sentence_bytes)
    tokenizer = SentencePieceTokenizer.load(model_path)
    record: dict[str, Any] = {
        "model": str(model_path), "vocab_size": tokenizer.vocab_size, "documents": len(source),
        "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id, "pad_id": tokenizer.pad_id,
        "chat_tokens": {t: tokenizer.token_to_id(t) for t in CHAT_TOKENS},
        "sha256": tokenizer.fingerprint, "settings": settings,
    }
    try:
        record["hf_dir"] = str(export_hf(model_path, model_path.parent / "hf"))
    except ImportError:
        record["hf_dir"] = None  # transformers is an optional extra ([hf])
    record["seconds"] = round(time.time() - started, 1)
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return record
