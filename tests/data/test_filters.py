"""Our curation steps make the same keep/drop decisions as datatrove's own filters on the same
documents (Gopher quality: with its two word ratios over whitespace words, as the paper has
them), apply only to the kinds they are configured for, and the toxicity model is real."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

pytest.importorskip("datatrove", reason="the [data] extra (datatrove) is not installed")

from datatrove.data import Document  # noqa: E402
from datatrove.pipeline.filters import (  # noqa: E402
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.filters.base_filter import get_filter_result  # noqa: E402
from datatrove.pipeline.formatters import PIIFormatter  # noqa: E402

from llm_jax.config import CurateConfig  # noqa: E402
from llm_jax.data.curate_steps import KindFilter, KindFormatter  # noqa: E402
from llm_jax.data.filters import make_filter, steps_by_kind  # noqa: E402
from llm_jax.data.sources import split_text  # noqa: E402
from llm_jax.data.toxicity import ToxicityFilter, toxic_fractions  # noqa: E402


def paper_gopher_quality() -> GopherQualityFilter:
    """datatrove's rules, with the paper's ratios over whitespace words (Rae et al. 2021, A.1.1:
    a hash or ellipsis per word at most 0.1; 80% of words with an alphabetic character)."""

    class PaperRatios(GopherQualityFilter):
        def filter(self, doc: Document) -> bool | tuple[bool, str]:
            words = doc.text.split()
            if (doc.text.count("#") > 0.1 * len(words)
                    or doc.text.count("...") + doc.text.count("…") > 0.1 * len(words)
                    or sum(any(c.isalpha() for c in w) for w in words) < 0.8 * len(words)):
                return False, "paper_ratio"
            return super().filter(doc)

    return PaperRatios(max_symbol_word_ratio=None, max_non_alpha_words_ratio=None)


REFERENCE = {
    "gopher_repetition": GopherRepetitionFilter,
    "gopher_quality": paper_gopher_quality,
    "c4": C4QualityFilter,
    "fineweb": FineWebQualityFilter,
}

JUNK = [
    "Buy now! " * 200,
    "\n".join(["same line again"] * 60),
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 20,
    "too short to be a document.",
    "# $ % & * { } [ ] < > | ~ ^ " * 40,
    "\n".join(f"- item {i}" for i in range(80)),
    "function f() { return 1; } var x = {a: 1}; javascript is required. " * 12,
]


@pytest.fixture(scope="module")
def documents(real_data: Path, shakespeare: str) -> list[Document]:
    """Real prose of several kinds, real code, and synthetic junk."""
    texts = split_text(shakespeare, 3000)
    with open(real_data / "gsm8k-test.jsonl") as f:
        texts += [(lambda r: r["question"] + "\n\n" + r["answer"])(json.loads(next(f))) for _ in range(6)]
    with open(real_data / "hh-rlhf-harmless-base-test.jsonl") as f:
        texts += [json.loads(next(f))["chosen"] for _ in range(6)]
    texts += JUNK
    docs = [Document(text=t, id=f"p{i}", metadata={"kind": "prose"}) for i, t in enumerate(texts)]
    code = Path(json.__file__).read_text()
    docs += [Document(text=t, id=f"c{i}", metadata={"kind": "code"}) for i, t in enumerate(split_text(code, 3000))]
    return docs


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_decisions_match_datatrove(name: str, documents: list[Document]) -> None:
    ours = KindFilter(name, make_filter(name, CurateConfig()), ["prose"])
    reference = REFERENCE[name]()
    kept = dropped = 0
    for doc in documents:
        mine, theirs = copy.deepcopy(doc), copy.deepcopy(doc)
        decision = get_filter_result(ours.filter(mine))[0]
        if doc.metadata["kind"] == "code":
            assert decision and mine.text == doc.text, "prose filters must not touch code"
            continue
        assert decision == get_filter_result(reference.filter(theirs))[0], doc.id
        assert mine.text == theirs.text  # C4 removes lines; both must remove the same ones
        kept, dropped = kept + decision, dropped + (not decision)
    assert kept and dropped, "the documents must exercise both outcomes"


def test_pii_matches_datatrove_and_skips_other_kinds() -> None:
    text = "Mail jane.doe@example.net or root@host.org; server 8.8.8.8, local 192.168.0.1."
    ours = KindFormatter("pii", make_filter("pii", CurateConfig()), ["prose"])
    docs = [Document(text=text, id="a", metadata={"kind": "prose"}),
            Document(text=text, id="b", metadata={"kind": "code"})]
    prose, code = list(ours.run(iter(docs)))
    assert prose.text == PIIFormatter().format(text)
    assert "jane.doe" not in prose.text and "8.8.8.8" not in prose.text and "192.168.0.1" in prose.text
    assert code.text == text


def test_steps_follow_the_configured_kinds() -> None:
    config = CurateConfig(prose_steps="pii,c4,gopher_quality", code_steps="pii")
    assert steps_by_kind(config) == {"gopher_quality": ["prose"], "c4": ["prose"], "pii": ["prose", "code"]}


def test_toxicity_is_a_trained_model(real_data: Path, shakespeare: str) -> None:
    from profanity_check import predict_prob

    assert predict_prob(["you are a fucking idiot"])[0] > 0.9
    assert predict_prob(["thank you for the lovely dinner"])[0] < 0.1
    benign = "Thank you for the lovely dinner.\nThe garden looks wonderful this spring."
    hostile = "You are a fucking idiot.\nShut up, you stupid piece of shit."
    mixed = "\n".join(["A calm line about the weather and the harvest."] * 30 + [hostile])
    assert list(toxic_fractions([benign, hostile], 0.9)) == [0.0, 1.0]
    step = ToxicityFilter(threshold=0.9, max_fraction=0.05)
    docs = [Document(text=t, id=str(i)) for i, t in enumerate([benign, hostile, mixed])]
    assert [get_filter_result(r)[0] for r in step.filter_batch(docs)] == [True, False, True]
    # Long documents are scored by line: a whole scene of Shakespeare scores high as one text,
    # yet its insults are a small share of it.
    scenes = split_text(shakespeare, 4000)
    scores = predict_prob(scenes)
    scene = scenes[int(scores.argmax())]
    assert scores.max() > 0.9
    assert get_filter_result(step.filter(Document(text=scene, id="s")))[0]
    with open(real_data / "hh-rlhf-harmless-base-test.jsonl") as f:
        rejected = [json.loads(line)["rejected"] for line in f]  # 2 of these 32 are flagged
    flagged = sum(not get_filter_result(r)[0] for r in step.filter_batch(
        [Document(text=t, id=str(i)) for i, t in enumerate(rejected)]))
    assert 0 < flagged < len(rejected) // 4
