"""The BPE tokenizer: lossless on any Unicode, Llama-style ids, and the same ids in transformers."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import pytest

from llm_jax.data.tokenizer import CHAT_TOKENS, SentencePieceTokenizer
from llm_jax.data.tokenizer_training import export_hf, train_tokenizer, training_lines
from llm_jax.errors import UserError

SAMPLES = [
    "Hello world",
    " leading space and trailing space ",
    "runs    of     spaces\tand\t\ttabs\t \t mixed",
    "line one\nline two\n\n\nthree blank lines before\r\nwindows line end",
    "emoji 😀🎉👩‍👩‍👧‍👦 and flags 🇫🇷",
    "中文文本，日本語のテキスト、한국어 텍스트",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n\tif x:\n\t\tpass\n",
    "numbers 1234567890 and 3.14159",
    "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n",
    "control \x00 \x07 \x1b[0m and \u200b zero width \ufeff bom",
    "",
    "   ",
    "\n",
]


def _random_text(rng: random.Random) -> str:
    """Arbitrary code points (no surrogates, no U+2581 which SentencePiece reserves for spaces)."""
    ranges = [(0x20, 0x7E), (0x0, 0x1F), (0xA0, 0x2FF), (0x370, 0x52F), (0x3040, 0x30FF),
              (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x1F300, 0x1FAFF), (0x10000, 0x10FFFF)]
    chars = []
    for _ in range(rng.randint(0, 40)):
        lo, hi = rng.choice(ranges)
        c = rng.randint(lo, hi)
        if 0xD800 <= c <= 0xDFFF or c == 0x2581:
            c = 0x20
        chars.append(chr(c))
    return "".join(chars)


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(trained_tokenizer: SentencePieceTokenizer, text: str) -> None:
    assert trained_tokenizer.decode(trained_tokenizer.encode(text)) == text
    assert trained_tokenizer.decode(trained_tokenizer.encode(text, bos=True, eos=True)) == text


def test_round_trip_on_random_unicode(trained_tokenizer: SentencePieceTokenizer) -> None:
    rng = random.Random(0)
    texts = [_random_text(rng) for _ in range(300)]
    for text, ids in zip(texts, trained_tokenizer.encode_batch(texts)):
        assert trained_tokenizer.decode(ids) == text
        assert trained_tokenizer.unk_id not in ids  # byte fallback, never <unk>


def test_special_tokens_and_options(trained_tokenizer: SentencePieceTokenizer) -> None:
    tok = trained_tokenizer
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 3)
    assert [tok.token_to_id(t) for t in CHAT_TOKENS] == [4, 5]
    assert tok.vocab_size == 1000
    ids = tok.encode("<|im_start|>x<|im_end|>", bos=True, eos=True)
    assert ids[:2] == [1, 4] and ids[-2:] == [5, 2]
    digits = tok.encode("9876543210")
    assert len(digits) == 10 and all(len(tok.id_to_token(i)) == 1 for i in digits)
    assert tok.id_to_token(tok.encode("    return")[0]) == "\u2581" * 4  # whitespace pieces
    with pytest.raises(KeyError):
        tok.token_to_id("no such piece")
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.encode(SAMPLES[6]) == tok.encode(SAMPLES[6]) and clone.fingerprint == tok.fingerprint


def test_exported_tokenizer_gives_the_same_ids(trained_tokenizer: SentencePieceTokenizer, tmp_path: Path,
                                               shakespeare: str) -> None:
    transformers = pytest.importorskip("transformers")
    model = tmp_path / "tokenizer.model"
    model.write_bytes(trained_tokenizer.__getstate__()["model_proto"])
    hf_dir = export_hf(model, tmp_path / "hf")
    hf = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    rng = random.Random(1)
    texts = SAMPLES + [shakespeare[:2000]] + [_random_text(rng) for _ in range(100)]
    for text in texts:
        ids = trained_tokenizer.encode(text)
        assert hf(text, add_special_tokens=False)["input_ids"] == ids, repr(text)
        assert hf(text)["input_ids"] == [trained_tokenizer.bos_id] + ids
        assert hf.decode(ids) == text
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, hf.unk_token_id) == (1, 2, 3, 0)
    assert hf.convert_tokens_to_ids(list(CHAT_TOKENS)) == [4, 5]


def test_vocabulary_larger_than_the_corpus_supports(tmp_path: Path) -> None:
    lines = training_lines(["a small corpus with few words\nand only two lines"], 4192)
    with pytest.raises(UserError, match=r"tokenizer.vocab_size=5000 is larger than this corpus supports .* set tokenizer.vocab_size=\d+ or less"):
        train_tokenizer(lines, tmp_path / "t.model", vocab_size=5000)
    assert not (tmp_path / "t.model").exists()
    with pytest.raises(UserError, match="no tokenizer at"):
        SentencePieceTokenizer.load(tmp_path / "t.model")


def test_training_lines_cut_long_lines_on_character_boundaries() -> None:
    lines = list(training_lines(["ééé" * 10 + "\n\n  \nshort"], 7))
    assert lines == ["ééé", "short"]
