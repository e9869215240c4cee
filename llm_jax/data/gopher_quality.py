"""Gopher's quality rules (Rae et al. 2021, appendix A.1.1) with the paper's words in its ratios.

The paper counts words split on whitespace: "80% of words in a document contain at least one
alphabetic character", "a symbol-to-word ratio greater than 0.1 for either the hash symbol or
the ellipsis". datatrove's `GopherQualityFilter` counts the words of a word tokenizer instead,
which makes every comma, full stop and parenthesis a word of its own: a clean encyclopedia
article then has about 80% alphabetic words and fails the 80% rule (over whitespace words it has
about 96%). This filter keeps datatrove's code for every other rule (document length, mean
word length, bullet and ellipsis lines, stop words) and computes the two ratios over
whitespace words, so it drops what the paper drops.
"""

from __future__ import annotations

from datatrove.data import Document
from datatrove.pipeline.filters import GopherQualityFilter


class PaperGopherQualityFilter(GopherQualityFilter):
    """datatrove's Gopher quality filter, its two word ratios over whitespace-separated words."""

    name = "🥇 Gopher Quality (whitespace-word ratios)"

    def __init__(self, max_symbol_word_ratio: float | None = 0.1,
                 min_alpha_words_ratio: float | None = 0.8, **kwargs) -> None:
        super().__init__(max_symbol_word_ratio=None, max_non_alpha_words_ratio=None, **kwargs)
        self.whitespace_max_symbol_word_ratio = max_symbol_word_ratio
        self.min_alpha_words_ratio = min_alpha_words_ratio

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        verdict = super().filter(doc)
        if verdict is not True:
            return verdict
        words = doc.text.split()
        if not words:
            return False, "gopher_short_doc"
        limit = self.whitespace_max_symbol_word_ratio
        if limit and doc.text.count("#") / len(words) > limit:
            return False, "gopher_too_many_hashes"
        if limit and (doc.text.count("...") + doc.text.count("…")) / len(words) > limit:
            return False, "gopher_too_many_ellipsis"
        alphabetic = sum(any(c.isalpha() for c in word) for word in words)
        if self.min_alpha_words_ratio and alphabetic / len(words) < self.min_alpha_words_ratio:
            return False, "gopher_below_alpha_threshold"
        return True
