"""Fixtures for the data tests: the shared real data, and small corpora built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """../shared/data beside the repository (real data sets); skips when it is missing."""
    if not (DATA / "tinyshakespeare.txt").is_file():
        pytest.skip(f"real test data not found at {DATA.resolve()}")
    return DATA.resolve()


@pytest.fixture(scope="session")
def shakespeare(data_dir: Path) -> str:
    return (data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")


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
    train_tokenizer(training_lines([shakespeare[:300_000], *code], 4192), path, vocab_size=1000)
    return SentencePieceTokenizer.load(path)
