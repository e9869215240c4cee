"""Default curation on clean prose mixed with planted bad documents: it keeps the clean
documents and drops the planted copies, near copies, junk and abuse.

The clean prose (tests/fixtures/clean-prose.jsonl) is encyclopedia-style articles with headings,
news reports, and book passages hard-wrapped at a fixed width, as in Project Gutenberg; the
junk and abuse (tests/fixtures/web-junk.jsonl) is menus, keyword spam, placeholder text, tables,
repeated lines, hashtags, cookie banners and abusive comments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("datatrove", reason="the [data] extra (datatrove) is not installed")

from datatrove.data import Document  # noqa: E402
from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter  # noqa: E402

from llm_jax.config import load_config  # noqa: E402
from llm_jax.data import corpus  # noqa: E402
from llm_jax.data.curate import curate  # noqa: E402
from llm_jax.data.curate_steps import KindFilter  # noqa: E402
from llm_jax.data.gopher_quality import PaperGopherQualityFilter  # noqa: E402
from llm_jax.data.unwrap import is_hard_wrapped, unwrap  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
COPIED, EDITED = slice(0, None, 6), slice(3, None, 6)  # clean documents planted again: 5 + 5


def _read(name: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in (FIXTURES / name).read_text(encoding="utf-8").splitlines()]


def _shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = text.split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _edited(text: str) -> str:
    """A near copy: one word changed and a sentence added, as a mirror site would serve it."""
    return text.replace(" the ", " this ", 1) + "\n\nThis page was last edited on 3 May.\n"


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory):
    clean = [r["text"] for r in _read("clean-prose.jsonl")]
    bad = [r["text"] for r in _read("web-junk.jsonl")]
    planted = clean[COPIED] + [_edited(t) for t in clean[EDITED]] + bad
    root = tmp_path_factory.mktemp("mixed")
    source = root / "mixed.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in clean + planted))
    config = load_config(None, [f"run_dir={root}", f"data.source={source}", "curate.tasks=2"])
    report = curate(config, progress=False)
    output = corpus.CorpusSource(root / "curated")
    kept = [output[i] for i in range(len(output))]
    return clean, bad, report, kept


def _copies_kept(text: str, kept: list[str]) -> int:
    """How many kept documents hold most of `text` (C4 and unwrapping change lines, not words)."""
    shingles = _shingles(text)
    return sum(len(shingles & _shingles(k)) > 0.5 * len(shingles) for k in kept)


def test_default_curation_keeps_clean_prose_and_drops_what_was_planted(outcome) -> None:
    clean, bad, report, kept = outcome
    copies = [_copies_kept(t, kept) for t in clean]
    assert sum(n >= 1 for n in copies) >= 0.9 * len(clean), (copies, report["steps"])
    twice = copies[COPIED] + copies[EDITED]
    dropped = sum(n == 1 for n in twice) + sum(_copies_kept(t, kept) == 0 for t in bad)
    assert dropped >= 0.9 * (len(twice) + len(bad)), (copies, report["steps"])
    assert len(kept) == report["documents_out"] <= len(clean)


def test_report_says_what_each_step_removed_from_otherwise_clean_text(outcome) -> None:
    _, _, report, _ = outcome
    by_name = {step["name"]: step for step in report["steps"]}
    assert by_name["unwrap"]["documents_changed"] >= 10  # the book passages
    for name in ("gopher_repetition", "gopher_quality", "c4", "fineweb"):
        assert by_name[name]["removed_only_here"] == {"documents": 0, "bytes": 0}, name
    # the abusive comments pass every other rule: only the classifier removes them
    assert by_name["toxicity"]["removed_only_here"]["documents"] >= 4


def test_a_step_counts_the_documents_no_later_step_would_remove() -> None:
    dense = Document(text=_read("clean-prose.jsonl")[10]["text"], id="0")
    junk = Document(text=_read("web-junk.jsonl")[3]["text"], id="1")  # a table of prices
    later = [KindFilter("c4", C4QualityFilter(), ["prose"])]
    step = KindFilter("gopher_quality", GopherQualityFilter(), ["prose"], later=later)
    for doc in (dense, junk):
        doc.metadata["kind"] = "prose"
        assert step.filter(doc)[0] is False
    assert step.stats["removed_only_here"].total == 1  # the article; C4 drops the table too
    assert step.stats["removed_only_here_bytes"].total == len(dense.text.encode())


def test_gopher_ratios_count_whitespace_words_as_the_paper_does() -> None:
    article = ("The river (1,006 km, or 625 mi) rises at 1,408 m; it flows north, then west, "
               "past Orléans, Blois, Tours, Angers and Nantes, to the sea. ") * 12
    words = article.split()
    assert sum(any(c.isalpha() for c in w) for w in words) / len(words) > 0.8
    doc = Document(text=article, id="0")
    assert GopherQualityFilter().filter(doc) == (False, "gopher_below_alpha_threshold")
    assert PaperGopherQualityFilter().filter(doc) is True
    table = "the rows of 1234.56 7890.12 3456.78 9012.34 and 5678.90 " * 20  # 4 of 9 alphabetic
    assert PaperGopherQualityFilter().filter(Document(text=table, id="1")) == (
        False, "gopher_below_alpha_threshold")
    hashes = "The tag list of the day with #news and #sport and #weather " * 10
    assert PaperGopherQualityFilter().filter(Document(text=hashes, id="2")) == (
        False, "gopher_too_many_hashes")


def test_unwrap_joins_hard_wrapped_paragraphs_only() -> None:
    book = next(r["text"] for r in _read("clean-prose.jsonl") if r["style"] == "book")
    assert is_hard_wrapped(book)
    joined = unwrap(book)
    assert joined.split() == book.split()
    assert all(line.rstrip().endswith((".", '"', "!", "?", "I")) for line in joined.splitlines()
               if line.strip())
    doc = Document(text=book, id="0")
    assert C4QualityFilter().filter(doc) is not True or len(doc.text) < 0.6 * len(book)
    assert C4QualityFilter().filter(Document(text=joined, id="1")) is True
    verse = "\n".join(["Now is the winter of our discontent", "Made glorious summer by this sun of York;",
                       "And all the clouds that lour'd upon our house", "In the deep bosom of the ocean buried."])
    web = "A paragraph on one line, as web pages have it. " * 4 + "\nAnother one, also long. " * 5
    repeated = "\n".join(["Click here to subscribe and never miss an update!"] * 10)
    for text in (verse, web, repeated):
        assert not is_hard_wrapped(text) and unwrap(text) == text
