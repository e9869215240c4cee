"""Fixtures for the data tests: real text from tests/fixtures, and corpora built once a session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shakespeare(real_data: Path) -> str:
    """48 KB of tinyshakespeare: real prose with short lines, dialogue and insults."""
    return (real_data / "tinyshakespeare.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def trained_tokenizer(tmp_path_factory: pytest.TempPathFactory, shakespeare: str):
    """A small BPE tokenizer trained on Shakespeare and some standard-library code."""
    from llm_jax.data.sources import ReadProblems, StdlibSource
    from llm_jax.data.tokenizer import SentencePieceTokenizer
    from llm_jax.data.tokenizer_training import train_tokenizer, training_lines

    source = StdlibSource(max_doc_chars=20000)
    code = [doc.text for unit in source.units()[1:40] for doc in source.read_unit(unit, ReadProblems())
            if doc.kind == "code"]
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.model"
    train_tokenizer(training_lines([shakespeare, *code], 4192), path, vocab_size=1000)
    return SentencePieceTokenizer.load(path)
