"""The allowed range of every numeric config key, one row per key.

`llm_jax.config` checks each int and float field against its row when a section is built, so a
value that would fail hours into a run (`checkpoint.every=0` dividing by zero, a negative
weight decay) fails at start instead, with a message that names the key and its range. A
numeric field without a row here fails at import, so a new key cannot skip the check.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Range:
    """An interval of allowed values, and values outside it that have a meaning of their own."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False  # low itself is excluded
    high_open: bool = False  # high itself is excluded
    special: tuple[tuple[int, str], ...] = ()  # (value, meaning), e.g. (0, "off")
    wording: str = ""  # replaces the computed description where a phrase reads better

    def allows(self, value: float) -> bool:
        if any(value == special for special, _ in self.special):
            return True
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self) -> str:
        if self.wording:
            return self.wording
        if self.high == math.inf:
            bound = f"{'>' if self.low_open else '>='} {self.low:g}"
        else:
            bound = (f"in {'(' if self.low_open else '['}{self.low:g}, "
                     f"{self.high:g}{')' if self.high_open else ']'}")
        return bound + "".join(f" or {value} ({meaning})" for value, meaning in self.special)

    def problem(self, key: str, value: float) -> str | None:
        """The error message for `key=value`, or None when the value is allowed."""
        if self.allows(value):
            return None
        finite = "" if math.isnan(value) or math.isfinite(value) else "a finite number "
        return f"{key}={value!r} must be {finite}{self.describe()}"


COUNT = Range(1)  # a size or a number of things that cannot be zero
NON_NEGATIVE = Range(0)  # a coefficient, a weight or a count where 0 is ordinary
POSITIVE = Range(0, low_open=True)
FRACTION = Range(0, 1)  # a share or a probability
FRACTION_BELOW_ONE = Range(0, 1, high_open=True)  # a held-out share: something must be left
PROBABILITY_MASS = Range(0, 1, low_open=True)  # top-p: some mass must be kept
ADAM_BETA = Range(0, 1, high_open=True)  # a decay rate of a moving average


def count_or(zero_means: str) -> Range:
    """A count >= 1 where 0 switches the feature off or picks a default."""
    return Range(1, special=((0, zero_means),))


MESH_AXIS = Range(1, special=((-1, "the devices the other axes leave"),),
                  wording="a positive size or -1 (the devices the other axes leave)")

NUMERIC_RANGES: dict[str, Range] = {
    "seed": NON_NEGATIVE,
    # model
    "model.vocab_size": COUNT,
    "model.d_model": COUNT,
    "model.num_layers": COUNT,
    "model.num_heads": COUNT,
    "model.num_kv_heads": COUNT,
    "model.head_dim": count_or("d_model // num_heads"),
    "model.mlp_dim": COUNT,
    "model.max_seq_len": COUNT,
    "model.rope_theta": POSITIVE,
    "model.norm_eps": POSITIVE,
    "model.scan_unroll": COUNT,
    "model.sliding_window": count_or("every layer attends globally"),
    "model.global_every": count_or("no global layers among the sliding-window ones"),
    "model.attn_softcap": NON_NEGATIVE,
    "model.splash_block": COUNT,
    "model.init_std": NON_NEGATIVE,
    # Llama 3.1 scaling divides the low frequencies by `factor`, so below 1 it would stretch them.
    "model.moe.experts": count_or("a dense MLP"),
    "model.moe.top_k": COUNT,
    "model.moe.shared_experts": NON_NEGATIVE,
    "model.moe.capacity_factor": NON_NEGATIVE,
    "model.moe.aux_loss": NON_NEGATIVE,
    "model.moe.z_loss": NON_NEGATIVE,
    "model.lora.rank": count_or("no adapters: every parameter is trained"),
    "model.lora.alpha": POSITIVE,
    "model.rope_scaling.factor": Range(1, special=((0, "off"),)),
    "model.rope_scaling.low_freq_factor": POSITIVE,
    "model.rope_scaling.high_freq_factor": POSITIVE,
    "model.rope_scaling.original_max_position_embeddings": COUNT,
    # mesh
    "mesh.data": MESH_AXIS,
    "mesh.fsdp": MESH_AXIS,
    "mesh.context": MESH_AXIS,
    "mesh.expert": MESH_AXIS,
    "mesh.tensor": MESH_AXIS,
    "mesh.pipe": MESH_AXIS,
    "mesh.dcn_data": COUNT,
    "mesh.dcn_fsdp": COUNT,
    "mesh.dcn_tensor": COUNT,
    "mesh.dcn_pipe": COUNT,
    "mesh.dcn_context": COUNT,
    "mesh.dcn_expert": COUNT,
    # data
    "data.seq_len": COUNT,
    "data.shuffle_rows": count_or("packed rows kept in order"),
    "data.eval_fraction": FRACTION_BELOW_ONE,
    "data.worker_count": count_or("in this process"),
    "data.shards": count_or("gcd(train.batch_size, 64)"),
    "data.max_doc_chars": count_or("never split"),
    # tokenizer
    "tokenizer.vocab_size": COUNT,
    "tokenizer.character_coverage": PROBABILITY_MASS,
    "tokenizer.max_sentences": COUNT,
    "tokenizer.max_sentence_bytes": COUNT,
    # curate
    "curate.minhash_ngrams": COUNT,
    "curate.minhash_buckets": COUNT,
    "curate.minhash_hashes_per_bucket": COUNT,
    "curate.toxicity_threshold": FRACTION,
    "curate.toxicity_max_fraction": FRACTION,
    "curate.max_documents": count_or("the whole source"),
    "curate.tasks": COUNT,
    "curate.workers": count_or("one per CPU"),
    "curate.cpus_per_task": COUNT,
    "curate.rejected_samples": NON_NEGATIVE,
    # optimizer
    "optimizer.lr": POSITIVE,
    "optimizer.warmup_steps": NON_NEGATIVE,
    "optimizer.min_lr_ratio": FRACTION,
    "optimizer.decay_fraction": FRACTION,
    "optimizer.weight_decay": NON_NEGATIVE,
    "optimizer.b1": ADAM_BETA,
    "optimizer.b2": ADAM_BETA,
    "optimizer.eps": POSITIVE,
    "optimizer.clip_norm": NON_NEGATIVE,  # 0: no clipping
    # train
    "train.steps": COUNT,
    "train.batch_size": COUNT,
    "train.microbatches": COUNT,
    "train.z_loss": NON_NEGATIVE,
    "train.loss_chunk": count_or("whole logits"),
    "train.log_every": COUNT,
    "train.max_bad_steps": COUNT,
    # post
    "post.eval_fraction": FRACTION_BELOW_ONE,
    "post.max_skipped_fraction": FRACTION,
    # dpo
    "dpo.beta": POSITIVE,
    "dpo.label_smoothing": Range(0, 0.5, high_open=True),  # at 0.5 the labels carry no signal
    # reward
    "reward.center_coef": NON_NEGATIVE,
    # ppo
    "ppo.kl_coef": NON_NEGATIVE,
    "ppo.gamma": FRACTION,
    "ppo.gae_lambda": FRACTION,
    "ppo.clip_range": POSITIVE,
    "ppo.value_clip_range": POSITIVE,
    "ppo.vf_coef": NON_NEGATIVE,
    "ppo.epochs": COUNT,
    "ppo.minibatches": COUNT,
    "ppo.group_size": COUNT,
    "ppo.max_new_tokens": COUNT,
    "ppo.temperature": POSITIVE,  # PPO's ratios need sampled, not greedy, responses
    "ppo.top_k": count_or("every token"),
    "ppo.top_p": PROBABILITY_MASS,
    # checkpoint
    "checkpoint.every": COUNT,
    "checkpoint.keep": COUNT,
    # eval
    "eval.every": count_or("only at the end"),
    "eval.steps": count_or("the whole held-out pass"),
}
