"""Checks shared by the data tests on the batches an iterator makes."""

from __future__ import annotations

import json
from typing import Any, Callable, Iterator

import numpy as np

Batch = dict[str, np.ndarray]


def take(iterator: Iterator[Batch], n: int) -> list[Batch]:
    return [next(iterator) for _ in range(n)]


def assert_resumes_exactly(make: Callable[[], Any], taken: int, more: int) -> None:
    """A fresh iterator from `make()`, given the state another saved after `taken` batches
    (through JSON, as a checkpoint stores it), makes the next `more` batches of one run that
    was never stopped."""
    uninterrupted = take(make(), taken + more)
    first = make()
    take(first, taken)
    state = json.loads(json.dumps(first.get_state()))
    resumed = make()
    resumed.set_state(state)
    for expected, got in zip(uninterrupted[taken:], take(resumed, more)):
        for key in expected:
            np.testing.assert_array_equal(expected[key], got[key])
