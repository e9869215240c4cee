"""When to save and stop for a preemption notice (SIGTERM, as TPU VMs and schedulers send).

One process: a SIGTERM handler sets a flag and the step in flight is the last. Several
processes: the notice may reach one host only, or the hosts at different steps, and a save
is collective, so they must stop at the same step. JAX's preemption sync service (started by
`jax.distributed.initialize`, which also catches SIGTERM) spreads the notice to every
process and picks the step after the furthest one reached; each process asks about every step.
"""

from __future__ import annotations

import signal
from typing import Any

import jax
from jax.experimental import multihost_utils


class Preemption:
    """`reached(step)` is True at the step all processes save and stop at."""

    def __init__(self) -> None:
        self._raised = False
        self._previous: Any = None
        self._synced = False

    def __enter__(self) -> "Preemption":
        self._synced = jax.process_count() > 1
        if self._synced:  # JAX's own handler catches SIGTERM; ours would take it away
            return self
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no signal handling there
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self._raised = True

    def reached(self, step: int) -> bool:
        """Called once per step, with the same steps on every process."""
        if self._synced:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._raised

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
