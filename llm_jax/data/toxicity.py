"""Toxicity filter: a trained classifier from a package, scored line by line.

The model is `alt-profanity-check`'s linear SVM over TF-IDF features (trained on a few hundred
thousand human-labelled comments and shipped inside the wheel, so it works offline). It was
trained on comment-sized text, and its probability on longer text saturates as offensive words
accumulate however rare they are: a 20k-character scene of Shakespeare scores 0.98, and so do
single long speeches in it. Documents are therefore scored line by line (a line of web text is
usually a paragraph), and a document is dropped when the lines whose probability reaches
`threshold` make up more than `max_fraction` of its characters.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

def lines(text: str) -> list[str]:
    """The lines with text in them."""
    return [line for line in text.split("\n") if line.strip()]


def toxic_fractions(texts: Sequence[str], threshold: float) -> np.ndarray:
    """For each text, the share of its characters in lines scored >= threshold."""
    from profanity_check import predict_prob

    pieces = [lines(t) for t in texts]
    flat = [p for ps in pieces for p in ps]
    if not flat:
        return np.zeros(len(texts))
    scores = predict_prob(flat)
    fractions, start = [], 0
    for ps in pieces:
        lengths = np.array([len(p) for p in ps], dtype=np.float64)
        toxic = scores[start : start + len(ps)] >= threshold
        start += len(ps)
        fractions.append(float(lengths[toxic].sum() / lengths.sum()) if len(ps) else 0.0)
    return np.asarray(fractions)


class ToxicityFilter(BaseFilter):
    """Drops documents with too much offensive text (see module docstring); scores in batches."""

    name = "☣ Toxicity (alt-profanity-check)"

    def __init__(self, threshold: float = 0.9, max_fraction: float = 0.05, batch_size: int = 64,
                 exclusion_writer=None) -> None:
        super().__init__(exclusion_writer=exclusion_writer, batch_size=batch_size)
        self.threshold = threshold
        self.max_fraction = max_fraction

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self.filter_batch([doc])[0]

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        fractions = toxic_fractions([doc.text for doc in batch], self.threshold)
        results: list[bool | tuple[bool, str]] = []
        for doc, fraction in zip(batch, fractions):
            doc.metadata["toxic_fraction"] = round(float(fraction), 4)
            results.append(True if fraction <= self.max_fraction else (False, "toxic"))
        return results
