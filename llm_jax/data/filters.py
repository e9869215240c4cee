"""The curation steps by name, each a published filter with its published defaults.

    unwrap             hard-wrapped paragraphs joined onto one line, for C4's line rules (`unwrap.py`)
    gopher_repetition  datatrove GopherRepetitionFilter (Rae et al. 2021, MassiveText table A1)
    gopher_quality     datatrove GopherQualityFilter, its word ratios over whitespace words as in
                       the paper (`gopher_quality.py`: word counts, symbol ratios, ...)
    c4                 datatrove C4QualityFilter (Raffel et al. 2020: line rules, then document rules)
    fineweb            datatrove FineWebQualityFilter (Penedo et al. 2024)
    toxicity           alt-profanity-check's trained linear SVM, line by line (`toxicity.py`)
    pii                datatrove PIIFormatter: emails and public IP addresses replaced

Deduplication (datatrove's exact and MinHash stages) is not listed here: it runs over every
document, whatever its kind, and is wired in `curate.py`.
"""

from __future__ import annotations

from typing import Any, Callable

from llm_jax.config import CURATE_STEPS, CurateConfig


def make_filter(name: str, curate: CurateConfig, language: str = "en") -> Any:
    """A fresh datatrove filter (or formatter, for `unwrap` and `pii`) for the step `name`."""
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.pipeline.formatters import PIIFormatter

    from llm_jax.data.gopher_quality import PaperGopherQualityFilter
    from llm_jax.data.toxicity import ToxicityFilter
    from llm_jax.data.unwrap import UnwrapFormatter

    factories: dict[str, Callable[[], Any]] = {
        "unwrap": lambda: UnwrapFormatter(),
        "gopher_repetition": lambda: GopherRepetitionFilter(language=language),
        "gopher_quality": lambda: PaperGopherQualityFilter(language=language),
        "c4": lambda: C4QualityFilter(language=language),
        "fineweb": lambda: FineWebQualityFilter(language=language),
        "toxicity": lambda: ToxicityFilter(curate.toxicity_threshold, curate.toxicity_max_fraction),
        "pii": lambda: PIIFormatter(),
    }
    return factories[name]()


def steps_by_kind(curate: CurateConfig) -> dict[str, list[str]]:
    """For each step in canonical order, the document kinds it applies to (steps that apply to
    no kind are left out)."""
    kinds: dict[str, list[str]] = {}
    for name in CURATE_STEPS:
        chosen = [kind for kind in ("prose", "code") if name in curate.step_names(kind)]
        if chosen:
            kinds[name] = chosen
    return kinds
