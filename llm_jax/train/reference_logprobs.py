"""`dpo.reference=precomputed`: the initial policy's summed reply log-probs of every pair,
computed in one pass before the first step and saved, so that a resumed run reuses exactly
them and no second copy of the model is kept in the train state."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

from llm_jax import storage
from llm_jax.config import Config
from llm_jax.data.post_pipeline import EncodedPair, ordered_pair_batches
from llm_jax.errors import UserError
from llm_jax.infer.host_arrays import global_batch, to_host
from llm_jax.parallel.sharding import sharding_context
from llm_jax.train.dpo import reply_logprobs
from llm_jax.train.forward import make_forward
from llm_jax.train.preference_batch import split_sides

Reference = dict[int, tuple[float, float]]  # pair index -> (chosen, rejected) log-probs
REFERENCE_FILE = "reference_logps.npz"


def _load(path: storage.AnyPath) -> Reference:
    if not path.exists():
        raise UserError(f"resuming dpo.reference=precomputed needs {path}, written when the "
                        "run started; it is missing")
    with path.open("rb") as f:
        saved = dict(np.load(f))
    return {int(i): (float(c), float(r))
            for i, c, r in zip(saved["index"], saved["chosen"], saved["rejected"])}


def reference_logprobs(config: Config, training: Any, state: Any, pairs: Sequence[EncodedPair],
                       path: storage.AnyPath, pad_id: int) -> Reference:
    """Every pair (train and eval splits) scored by `state.params`, or read back from `path`
    when the run resumes past step 0. Every process scores the same global batches of all
    pairs and reads the scores back whole, so each holds them all and a run resumes on any
    process count; process 0 writes the file."""
    if int(jax.device_get(state.step)) > 0:
        return _load(path)
    forward = make_forward(config, training.mesh)
    logps = jax.jit(lambda params, batch: reply_logprobs(forward, params, batch))  # [2B]
    reference: Reference = {}
    indices = np.arange(len(pairs))
    for chunk, batch in ordered_pair_batches(pairs, indices, config.data.seq_len,
                                             config.train.batch_size, pad_id):
        with sharding_context(training.mesh, training.rules):
            scored = logps(state.params, {name: global_batch(value, training.batch_sharding)
                                          for name, value in batch.items()})
        chosen, rejected = split_sides(to_host(scored))
        for k, index in enumerate(chunk):
            reference[int(index)] = (float(chosen[k]), float(rejected[k]))
    if jax.process_index() == 0:
        with path.open("wb") as f:
            np.savez(f, index=indices, chosen=[reference[i][0] for i in indices],
                     rejected=[reference[i][1] for i in indices])
    return reference
