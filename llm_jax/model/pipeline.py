"""GPipe pipeline parallelism over the `pipe` mesh axis, written as one SPMD program.

The scanned layer stack [layers, ...] is viewed as [stages, layers / stages, ...]; with the
`layers -> pipe` rule each device of the `pipe` axis holds one stage's layers. The batch is cut
into microbatches, and every iteration all stages run at once (`vmap` over the stage axis,
sharded over `pipe`), then each stage's output moves to the next stage (`jnp.roll` on a sharded
axis: a collective permute). After `microbatches + stages - 1` iterations every microbatch has
passed every stage. Autodiff of the loop gives the backward schedule. Stages idle in the
fill and drain iterations compute on zeros that never reach the output: the bubble, a fraction
(stages - 1) / (microbatches + stages - 1) of the step.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from llm_jax.model.microbatches import merge_microbatches, split_microbatches

StageFn = Callable[[Any, jnp.ndarray, jnp.ndarray, jnp.ndarray], jnp.ndarray]

STAGE_AXES = ("pipe_stage", "act_batch", "act_length", "act_embed")


def bubble_fraction(stages: int, microbatches: int) -> float:
    """Share of a GPipe step that a stage spends idle."""
    return (stages - 1) / (microbatches + stages - 1)


def gpipe(stage_fn: StageFn, layer_params: Any, x: jnp.ndarray, positions: jnp.ndarray,
          segment_ids: jnp.ndarray, stages: int, microbatches: int) -> jnp.ndarray:
    """Runs `stage_fn(stage_params, x, positions, segment_ids)` for each stage in order over
    each microbatch; equals applying all layers to the whole batch."""
    stage_params = jax.tree.map(
        lambda p: p.reshape(stages, p.shape[0] // stages, *p.shape[1:]), layer_params)
    inputs = split_microbatches((x, positions, segment_ids), microbatches)
    run_stages = jax.vmap(stage_fn, spmd_axis_name="pipe")

    def constrain(state):
        return nn.with_logical_constraint(state, STAGE_AXES)

    def iteration(carry, t):
        state, state_pos, state_seg, outputs = carry
        feed = jnp.minimum(t, microbatches - 1)
        state = constrain(state.at[0].set(inputs[0][feed]))
        state_pos = state_pos.at[0].set(inputs[1][feed])
        state_seg = state_seg.at[0].set(inputs[2][feed])
        out = constrain(run_stages(stage_params, state, state_pos, state_seg))
        finished = t - (stages - 1)
        slot = jnp.maximum(finished, 0)
        outputs = outputs.at[slot].set(jnp.where(finished >= 0, out[-1], outputs[slot]))
        shifted = (jnp.roll(out, 1, axis=0), jnp.roll(state_pos, 1, axis=0),
                   jnp.roll(state_seg, 1, axis=0))
        return (*shifted, outputs), None

    per_stage = (stages, *inputs[0].shape[1:])
    carry = (
        jnp.zeros(per_stage, x.dtype),
        jnp.zeros(per_stage[:-1], positions.dtype),
        jnp.zeros(per_stage[:-1], segment_ids.dtype),
        jnp.zeros_like(inputs[0]),
    )
    (_, _, _, outputs), _ = jax.lax.scan(iteration, carry,
                                         jnp.arange(microbatches + stages - 1))
    return merge_microbatches(outputs)
