"""Held-out evaluation of any objective: its loss and metrics summed over eval batches and
divided once, exactly as the train step averages them, without updating anything."""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterator

import jax
import numpy as np

from llm_jax.parallel.lockstep import lockstep
from llm_jax.parallel.sharding import sharding_context
from llm_jax.train.init_from import reference_params


def to_global(local: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
    """Each process contributes its own rows of the global batch."""
    return {name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
            for name, value in local.items()}


def make_objective_eval(training: Any) -> Callable[[Any, Iterator[dict], int], dict[str, float]]:
    """`evaluate(state, batches, steps)` -> {"eval_loss", "eval_<metric>", ...}."""
    objective = training.objective

    @jax.jit
    def sums_of(state, batch):
        reference = reference_params(training.config, state)
        fn = objective if reference is None else functools.partial(objective, reference=reference)
        return fn(state.params, batch)

    def evaluate(state, batches: Iterator[dict], steps: int) -> dict[str, float]:
        numerator, totals = 0.0, {}
        for local in lockstep(batches, steps):
            with sharding_context(training.mesh, training.rules):
                num, sums = sums_of(state, to_global(local, training.batch_sharding))
            numerator += float(num)
            for name, value in jax.device_get(sums).items():
                totals[name] = totals.get(name, 0.0) + float(value)
        return objective_metrics(numerator, totals)

    return evaluate


def objective_metrics(numerator: float, totals: dict[str, float]) -> dict[str, float]:
    """Summed loss and metrics divided once by their summed `denominator`."""
    totals = dict(totals)
    denominator = totals.pop("denominator", 0.0)
    if not denominator:
        return {}
    return {"eval_loss": numerator / denominator,
            **{f"eval_{name}": value / denominator for name, value in totals.items()}}
