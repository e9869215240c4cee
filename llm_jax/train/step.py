"""The jitted train step: `step(state, batch) -> (state, metrics)`.

Gradients are accumulated over `train.microbatches` with `lax.scan` (unless the pipeline
consumes the microbatches itself), summed as loss numerators and divided once by the total
denominator, so the result equals the full-batch gradient. A non-finite loss or gradient
leaves the parameters and optimizer state untouched and is counted in `bad_steps`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from llm_jax.model.microbatches import split_microbatches
from llm_jax.train import trainable
from llm_jax.train.instruments import Instruments, update_ratios
from llm_jax.train.objectives import Batch, Objective
from llm_jax.train.state import TrainState


def accumulate_gradients(objective: Objective, params: Any, batch: Batch, microbatches: int):
    """(numerator, sums, gradient of the numerator), summed over microbatches."""
    grad_fn = jax.value_and_grad(objective, has_aux=True)
    if microbatches == 1:
        (numerator, sums), grads = grad_fn(params, batch)
        return numerator, sums, grads

    micro = split_microbatches(batch, microbatches)
    first = jax.tree.map(lambda x: x[0], micro)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                         jax.eval_shape(grad_fn, params, first))

    def body(carry, microbatch):
        return jax.tree.map(jnp.add, carry, grad_fn(params, microbatch)), None

    ((numerator, sums), grads), _ = jax.lax.scan(body, zeros, micro)
    return numerator, sums, grads


def make_train_step(objective: Objective, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, microbatches: int = 1,
                    instruments: Instruments | None = None,
                    reference: Callable[[TrainState], Any] = lambda state: state.reference,
                    adapters_only: bool = False):
    """The un-jitted step; `llm_jax.parallel.sharding.jit_train_step` compiles it for a mesh.
    With `instruments` (`train.instrument`), its metrics gain the per-layer measurements.
    `reference(state)` is the frozen policy the objective compares with (None: no reference);
    `adapters_only` (LoRA) differentiates and updates the adapters and head alone."""

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        # The frozen reference (DPO, PPO) is an input of the objective, never differentiated.
        frozen_policy = reference(state)
        loss_fn = (objective if frozen_policy is None
                   else functools.partial(objective, reference=frozen_policy))
        if adapters_only:
            trained, frozen = trainable.split(state.params)
            loss_of_trained = lambda t, b: loss_fn(trainable.merge(t, frozen), b)  # noqa: E731
        else:
            trained, loss_of_trained = state.params, loss_fn
        numerator, sums, grads = accumulate_gradients(loss_of_trained, trained, batch,
                                                      microbatches)
        denominator = jnp.maximum(sums["denominator"], 1.0)
        loss = numerator / denominator
        grads = jax.tree.map(lambda g: g / denominator, grads)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = tx.update(grads, state.opt_state, trained)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        updated = keep(optax.apply_updates(trained, updates), trained)
        new_state = state.replace(
            step=state.step + 1,
            params=trainable.merge(updated, frozen) if adapters_only else updated,
            opt_state=keep(opt_state, state.opt_state),
            bad_steps=jnp.where(finite, 0, state.bad_steps + 1),
        )
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "lr": schedule(state.step),
            "skipped": (~finite).astype(jnp.int32),
            "bad_steps": new_state.bad_steps,
            "tokens": sums["denominator"],
        }
        metrics.update({name: value / denominator for name, value in sums.items()
                        if name != "denominator"})
        if instruments is not None:
            metrics.update(instruments(state.params, batch))
            metrics.update(update_ratios(updates, trained))
        return new_state, metrics

    return train_step
