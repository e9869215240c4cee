"""The curation steps by name, each a published filter with its published defaults.

    gopher_repetition  datatrove GopherRepetitionFilter (Rae et al. 2021, MassiveText table A1)
    gopher_quality     datatrove GopherQualityFilter (same paper: word counts, symbol ratios, ...)
    c4                 datatrove C4QualityFilter (Raffel et al. 2020: line rules, then document rules)
    fineweb            datatrove FineWebQualityFilter (Penedo et al. 2024)
    toxicity           alt-profanity-check's trained linear SVM, line by line (`toxicity.py`)
    pii                datatrove PIIFormatter: emails and public IP addresses replaced

Deduplication (datatrove's exact and MinHash stages) is not listed here: it runs over every
document, whatever its kind, and is wired in `curate.py`.
"""

from __future__ import annotations

from typing import Any, Callable

from llm_jax.config import CURATE_FILTERS, CURATE_FORMATTERS, CurateConfig


def make_filter(name: str, curate: CurateConfig, language: str = "en") -> Any:
    """A fresh datatrove filter (or formatter, for `pii`) for the step `name`."""
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.pipeline.formatters import PIIFormatter

    from llm_jax.data.toxicity import ToxicityFilter

    factories: dict[str, Callable[[], Any]] = {
        "gopher_repetition": lambda: GopherRepetitionFilter(language=language),
        "gopher_quality": lambda: GopherQualityFilter(language=language),
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
    for name in CURATE_FILTERS + CURATE_FORMATTERS:
        chosen = [kind for kind in ("prose", "code") if name in curate.step_names(kind)]
        if chosen:
            kinds[name] = chosen
    return kinds
