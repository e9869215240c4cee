"""Joins the lines of hard-wrapped paragraphs, so that a line is a paragraph again.

C4's rules read a document line by line, as in the web pages they were made for, where a line
is a paragraph: a line that does not end in terminal punctuation is removed, then a document
with fewer than five sentences left is dropped. Text wrapped at a fixed width (Project
Gutenberg books, mailing lists, plain-text papers) ends most lines mid-sentence, so C4 drops
such a document, or keeps only the fragments of its paragraphs that happen to end a line.

A document counts as hard-wrapped when it has no long lines, no line twice, and almost every
line that a paragraph continues after is full: the next line's first word would not have fitted
on it. Verse, dialogue, lists and menus have short lines where the next word would fit, web text
has long ones, and boilerplate repeats its lines, so they are left as they are (and the
repetition rules still see the repeated lines).
"""

from __future__ import annotations

import re

from datatrove.pipeline.formatters.base import BaseFormatter

MAX_WIDTH = 100  # wider lines are paragraphs of their own, not a wrapping width
FULL = 0.9  # a line is full when it and the next word reach this share of the widest line
WRAPPED_SHARE = 0.8  # share of continued lines that must be full
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


def is_hard_wrapped(text: str) -> bool:
    """Whether the lines of `text` were broken at a fixed width (see the module docstring)."""
    lines = [line.rstrip() for line in text.split("\n")]
    width = max((len(line) for line in lines), default=0)
    if not 0 < width <= MAX_WIDTH:
        return False
    continued = [(line, nxt) for line, nxt in zip(lines, lines[1:]) if line.strip() and nxt.strip()]
    if len(continued) < 2 or len({line for line, _ in continued}) < len(continued):
        return False
    full = sum(len(line) + 1 + len(nxt.split()[0]) > FULL * width for line, nxt in continued)
    return full >= WRAPPED_SHARE * len(continued)


def unwrap(text: str) -> str:
    """`text` with each paragraph on one line, when it is hard-wrapped; otherwise unchanged."""
    if not is_hard_wrapped(text):
        return text
    paragraphs = _PARAGRAPH_BREAK.split(text)
    return "\n\n".join(" ".join(line.strip() for line in paragraph.split("\n") if line.strip())
                       for paragraph in paragraphs)


class UnwrapFormatter(BaseFormatter):
    """`unwrap` as a datatrove step, run on prose before the line-based quality rules."""

    name = "↩ Unwrap hard-wrapped paragraphs"

    def format(self, text: str) -> str:
        return unwrap(text)
