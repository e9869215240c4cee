"""When PPO samples a new rollout, and which of its updates each step takes."""

from __future__ import annotations

from typing import Any


class RolloutSchedule:
    """Tells the loop, step by step, when to sample a new rollout and which update of it to
    take: `{"index": prompt indices, "update": 0}` starts a rollout, `{"update": u}` continues.

    Its state points at the prompts of the rollout in progress, so a resumed run samples that
    rollout again (from the restored policy) and continues with the update where it stopped.
    """

    def __init__(self, prompts: Any, updates: int) -> None:
        self.prompts, self.updates = prompts, updates
        self.position = 0
        self._before = prompts.get_state()
        self._resample = False

    def __iter__(self) -> "RolloutSchedule":
        return self

    def __next__(self) -> dict[str, Any]:
        if self.position == 0 or self._resample:
            self._before = self.prompts.get_state()
            out = {"index": next(self.prompts)["index"], "update": self.position}
            self._resample = False
        else:
            out = {"update": self.position}
        self.position = (self.position + 1) % self.updates
        return out

    def get_state(self) -> dict[str, Any]:
        if self.position == 0:
            return {"prompts": self.prompts.get_state(), "update": 0}
        return {"prompts": self._before, "update": self.position}

    def set_state(self, state: dict[str, Any]) -> None:
        self.prompts.set_state(state["prompts"])
        self._before = state["prompts"]
        self.position = int(state["update"])
        self._resample = self.position != 0
