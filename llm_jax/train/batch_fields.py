"""The batch each objective's train step reads: field names and dtypes, every field
[batch, seq_len]. Ahead-of-time compilation (`llm-jax plan`) builds abstract batches from it."""

from __future__ import annotations

import numpy as np

from llm_jax.config import Config
from llm_jax.data.post_pipeline import PAIR_SIDES

LM_FIELDS = {"inputs": np.int32, "targets": np.int32, "positions": np.int32,
             "segment_ids": np.int32, "loss_mask": np.float32}
ROLLOUT_FIELDS = {"tokens": np.int32, "positions": np.int32, "segment_ids": np.int32,
                  "response_mask": np.float32, "scores": np.float32, "old_logprobs": np.float32,
                  "ref_logprobs": np.float32, "old_values": np.float32, "returns": np.float32,
                  "advantages": np.float32, "kl": np.float32}


def batch_fields(config: Config) -> dict[str, type]:
    objective = config.train.objective
    if objective in ("lm", "sft"):
        return dict(LM_FIELDS)
    if objective == "ppo":
        return dict(ROLLOUT_FIELDS)
    fields = {}
    for side in PAIR_SIDES:
        fields.update({f"{side}_tokens": np.int32, f"{side}_mask": np.float32,
                       f"{side}_segment_ids": np.int32, f"{side}_positions": np.int32})
        if objective == "dpo" and config.dpo.reference == "precomputed":
            fields[f"{side}_ref_logps"] = np.float32
    return fields
