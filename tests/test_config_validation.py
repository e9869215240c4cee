"""Every numeric config key is checked against its domain when the config is built."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest

from llm_jax.config import (PRESET_DIR, CheckpointConfig, Config, ConfigError, EvalConfig,
                            load_config)
from llm_jax.config_ranges import NUMERIC_RANGES, Range

# (override, the whole message): the domains written out here, apart from the table they test.
INVALID = [
    ("seed=-1", "seed=-1 must be >= 0"),
    ("model.vocab_size=0", "model.vocab_size=0 must be >= 1"),
    ("model.d_model=-8", "model.d_model=-8 must be >= 1"),
    ("model.num_layers=0", "model.num_layers=0 must be >= 1"),
    ("model.num_heads=0", "model.num_heads=0 must be >= 1"),
    ("model.num_kv_heads=0", "model.num_kv_heads=0 must be >= 1"),
    ("model.head_dim=-1", "model.head_dim=-1 must be >= 1 or 0 (d_model // num_heads)"),
    ("model.mlp_dim=0", "model.mlp_dim=0 must be >= 1"),
    ("model.max_seq_len=0", "model.max_seq_len=0 must be >= 1"),
    ("model.rope_theta=0", "model.rope_theta=0.0 must be > 0"),
    ("model.norm_eps=0", "model.norm_eps=0.0 must be > 0"),
    ("model.scan_unroll=0", "model.scan_unroll=0 must be >= 1"),
    ("model.init_std=-0.02", "model.init_std=-0.02 must be >= 0"),
    ("model.rope_scaling.factor=0.5", "model.rope_scaling.factor=0.5 must be >= 1 or 0 (off)"),
    ("model.rope_scaling.low_freq_factor=0",
     "model.rope_scaling.low_freq_factor=0.0 must be > 0"),
    ("model.rope_scaling.high_freq_factor=-4",
     "model.rope_scaling.high_freq_factor=-4.0 must be > 0"),
    ("model.rope_scaling.original_max_position_embeddings=0",
     "model.rope_scaling.original_max_position_embeddings=0 must be >= 1"),
    ("mesh.data=0", "mesh.data=0 must be a positive size or -1 (the devices the other axes leave)"),
    ("mesh.fsdp=-2", "mesh.fsdp=-2 must be a positive size or -1"),
    ("mesh.tensor=0", "mesh.tensor=0 must be a positive size or -1"),
    ("mesh.pipe=-3", "mesh.pipe=-3 must be a positive size or -1"),
    ("mesh.dcn_data=0", "mesh.dcn_data=0 must be >= 1"),
    ("mesh.dcn_fsdp=-1", "mesh.dcn_fsdp=-1 must be >= 1"),
    ("mesh.dcn_tensor=0", "mesh.dcn_tensor=0 must be >= 1"),
    ("mesh.dcn_pipe=0", "mesh.dcn_pipe=0 must be >= 1"),
    ("data.seq_len=0", "data.seq_len=0 must be >= 1"),
    ("data.eval_fraction=1", "data.eval_fraction=1.0 must be in [0, 1)"),
    ("data.eval_fraction=-0.1", "data.eval_fraction=-0.1 must be in [0, 1)"),
    ("data.worker_count=-1", "data.worker_count=-1 must be >= 1 or 0 (in this process)"),
    ("data.max_doc_chars=-1", "data.max_doc_chars=-1 must be >= 1 or 0 (never split)"),
    ("tokenizer.vocab_size=0", "tokenizer.vocab_size=0 must be >= 1"),
    ("tokenizer.character_coverage=0", "tokenizer.character_coverage=0.0 must be in (0, 1]"),
    ("tokenizer.character_coverage=1.01", "tokenizer.character_coverage=1.01 must be in (0, 1]"),
    ("tokenizer.max_sentences=0", "tokenizer.max_sentences=0 must be >= 1"),
    ("tokenizer.max_sentence_bytes=0", "tokenizer.max_sentence_bytes=0 must be >= 1"),
    ("curate.minhash_ngrams=0", "curate.minhash_ngrams=0 must be >= 1"),
    ("curate.minhash_buckets=0", "curate.minhash_buckets=0 must be >= 1"),
    ("curate.minhash_hashes_per_bucket=0", "curate.minhash_hashes_per_bucket=0 must be >= 1"),
    ("curate.toxicity_threshold=1.5", "curate.toxicity_threshold=1.5 must be in [0, 1]"),
    ("curate.toxicity_max_fraction=-0.1", "curate.toxicity_max_fraction=-0.1 must be in [0, 1]"),
    ("curate.max_documents=-1", "curate.max_documents=-1 must be >= 1 or 0 (the whole source)"),
    ("curate.tasks=0", "curate.tasks=0 must be >= 1"),
    ("curate.workers=-2", "curate.workers=-2 must be >= 1 or 0 (one per CPU)"),
    ("curate.rejected_samples=-1", "curate.rejected_samples=-1 must be >= 0"),
    ("optimizer.lr=0", "optimizer.lr=0.0 must be > 0"),
    ("optimizer.lr=.inf", "optimizer.lr=inf must be a finite number > 0"),
    ("optimizer.lr=.nan", "optimizer.lr=nan must be > 0"),
    ("optimizer.warmup_steps=-1", "optimizer.warmup_steps=-1 must be >= 0"),
    ("optimizer.min_lr_ratio=1.5", "optimizer.min_lr_ratio=1.5 must be in [0, 1]"),
    ("optimizer.decay_fraction=-0.2", "optimizer.decay_fraction=-0.2 must be in [0, 1]"),
    ("optimizer.weight_decay=-0.1", "optimizer.weight_decay=-0.1 must be >= 0"),
    ("optimizer.b1=1", "optimizer.b1=1.0 must be in [0, 1)"),
    ("optimizer.b2=-0.5", "optimizer.b2=-0.5 must be in [0, 1)"),
    ("optimizer.eps=0", "optimizer.eps=0.0 must be > 0"),
    ("optimizer.clip_norm=-1", "optimizer.clip_norm=-1.0 must be >= 0"),
    ("train.steps=0", "train.steps=0 must be >= 1"),
    ("train.batch_size=0", "train.batch_size=0 must be >= 1"),
    ("train.microbatches=0", "train.microbatches=0 must be >= 1"),
    ("train.z_loss=-1e-4", "train.z_loss=-0.0001 must be >= 0"),
    ("train.loss_chunk=-128", "train.loss_chunk=-128 must be >= 1 or 0 (whole logits)"),
    ("train.log_every=0", "train.log_every=0 must be >= 1"),
    ("train.max_bad_steps=0", "train.max_bad_steps=0 must be >= 1"),
    ("post.eval_fraction=1", "post.eval_fraction=1.0 must be in [0, 1)"),
    ("post.max_skipped_fraction=2", "post.max_skipped_fraction=2.0 must be in [0, 1]"),
    ("dpo.beta=0", "dpo.beta=0.0 must be > 0"),
    ("dpo.label_smoothing=0.5", "dpo.label_smoothing=0.5 must be in [0, 0.5)"),
    ("reward.center_coef=-0.01", "reward.center_coef=-0.01 must be >= 0"),
    ("ppo.kl_coef=-0.05", "ppo.kl_coef=-0.05 must be >= 0"),
    ("ppo.gamma=1.01", "ppo.gamma=1.01 must be in [0, 1]"),
    ("ppo.gae_lambda=-0.1", "ppo.gae_lambda=-0.1 must be in [0, 1]"),
    ("ppo.clip_range=0", "ppo.clip_range=0.0 must be > 0"),
    ("ppo.value_clip_range=-0.2", "ppo.value_clip_range=-0.2 must be > 0"),
    ("ppo.vf_coef=-0.1", "ppo.vf_coef=-0.1 must be >= 0"),
    ("ppo.epochs=0", "ppo.epochs=0 must be >= 1"),
    ("ppo.minibatches=0", "ppo.minibatches=0 must be >= 1"),
    ("ppo.group_size=0", "ppo.group_size=0 must be >= 1"),
    ("ppo.max_new_tokens=0", "ppo.max_new_tokens=0 must be >= 1"),
    ("ppo.temperature=0", "ppo.temperature=0.0 must be > 0"),
    ("ppo.top_k=-1", "ppo.top_k=-1 must be >= 1 or 0 (every token)"),
    ("ppo.top_p=0", "ppo.top_p=0.0 must be in (0, 1]"),
    ("checkpoint.every=0", "checkpoint.every=0 must be >= 1"),
    ("checkpoint.keep=0", "checkpoint.keep=0 must be >= 1"),
    ("eval.every=-1", "eval.every=-1 must be >= 1 or 0 (only at the end)"),
    ("eval.steps=-3", "eval.steps=-3 must be >= 1 or 0 (the whole held-out pass)"),
]

# Values on the edge of each domain, with what they need of other keys to be a valid run.
BOUNDARY_VALID = [
    ("seed=0",),
    ("model.num_heads=1", "model.num_kv_heads=1"),
    ("model.head_dim=0",),
    ("model.init_std=0",),
    ("model.rope_scaling.factor=0",),
    ("model.rope_scaling.factor=1",),
    ("model.norm_eps=1e-12",),
    ("mesh.data=-1", "mesh.fsdp=1"),
    ("mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1", "mesh.pipe=1"),
    ("data.seq_len=1",),
    ("data.eval_fraction=0",),
    ("data.eval_fraction=0.999",),
    ("data.worker_count=0",),
    ("data.max_doc_chars=0",),
    ("tokenizer.character_coverage=1",),
    ("curate.toxicity_threshold=0", "curate.toxicity_max_fraction=1"),
    ("curate.max_documents=0", "curate.workers=0", "curate.rejected_samples=0",
     "curate.tasks=1"),
    ("optimizer.warmup_steps=0",),
    ("optimizer.min_lr_ratio=0", "optimizer.decay_fraction=1"),
    ("optimizer.min_lr_ratio=1", "optimizer.decay_fraction=0"),
    ("optimizer.weight_decay=0",),
    ("optimizer.b1=0", "optimizer.b2=0.99999"),
    ("optimizer.eps=1e-30",),
    ("optimizer.clip_norm=0",),
    ("train.steps=1", "train.batch_size=1", "train.log_every=1", "train.max_bad_steps=1"),
    ("train.z_loss=0", "train.loss_chunk=0"),
    ("post.eval_fraction=0", "post.max_skipped_fraction=1"),
    ("post.max_skipped_fraction=0",),
    ("dpo.loss=robust", "dpo.label_smoothing=0.49"),
    ("dpo.beta=1e-6",),
    ("reward.center_coef=0",),
    ("ppo.kl_coef=0", "ppo.vf_coef=0", "ppo.gamma=0", "ppo.gae_lambda=1"),
    ("ppo.gamma=1", "ppo.gae_lambda=0"),
    ("ppo.group_size=1", "ppo.top_k=0", "ppo.top_p=1", "ppo.epochs=1", "ppo.minibatches=1"),
    ("ppo.max_new_tokens=1", "ppo.temperature=1e-3"),
    ("checkpoint.every=1", "checkpoint.keep=1"),
    ("eval.every=0", "eval.steps=0"),
    ("eval.every=1", "eval.steps=1"),
]


def _numeric_defaults(section=Config(), prefix: str = "") -> dict[str, int | float]:
    values = {}
    for field in dataclasses.fields(section):
        value, key = getattr(section, field.name), f"{prefix}{field.name}"
        if dataclasses.is_dataclass(value):
            values.update(_numeric_defaults(value, f"{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            values[key] = value
    return values


@pytest.mark.parametrize("override, message", INVALID, ids=[o for o, _ in INVALID])
def test_invalid_value_names_the_key_and_its_range(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config("tiny", [override])
    assert str(err.value).startswith(message), str(err.value)


@pytest.mark.parametrize("overrides", BOUNDARY_VALID, ids=[" ".join(o) for o in BOUNDARY_VALID])
def test_boundary_value_is_accepted(overrides: tuple[str, ...]) -> None:
    config = load_config("tiny", list(overrides))
    for override in overrides:
        key, raw = override.split("=")
        node = config
        for part in key.split("."):
            node = getattr(node, part)
        assert node == (raw if isinstance(node, str) else type(node)(raw)), override


def test_every_numeric_key_has_a_range_and_every_range_a_key() -> None:
    assert set(NUMERIC_RANGES) == set(_numeric_defaults())


def _past_the_bounds(rule: Range, integer: bool) -> list[int | float]:
    """Values just below the lowest allowed value and just above the highest one."""
    steps = [1] if integer else [1, 1e-3]
    lowest = min([rule.low, *(value for value, _ in rule.special)])
    candidates = [rule.low, rule.high] + [lowest - step for step in steps]
    candidates += [rule.high + step for step in steps]
    return [int(v) if integer else v for v in candidates if math.isfinite(v)]


@pytest.mark.parametrize("key", sorted(NUMERIC_RANGES))
def test_every_section_checks_its_keys_when_built(key: str) -> None:
    """Each section's own check runs: a value just past each bound of its row is refused."""
    rule = NUMERIC_RANGES[key]
    integer = isinstance(_numeric_defaults()[key], int)
    refused = [v for v in _past_the_bounds(rule, integer) if not rule.allows(v)]
    assert refused, f"{key}: no finite bound to test"
    for value in refused:
        with pytest.raises(ConfigError, match=f"^{re.escape(key)}=.* must be "
                                              f"{re.escape(rule.describe())}"):
            load_config(None, [f"{key}={value}"])


def test_sections_built_directly_are_checked_too() -> None:
    with pytest.raises(ConfigError, match=r"checkpoint.every=0 must be >= 1"):
        CheckpointConfig(every=0)
    with pytest.raises(ConfigError, match=r"eval.steps=-1 must be >= 1 or 0"):
        EvalConfig(steps=-1)


def test_checks_across_keys_still_apply_after_the_ranges() -> None:
    with pytest.raises(ConfigError,
                       match="at most one of mesh.data/fsdp/tensor/pipe/context/expert may"):
        load_config("tiny", ["mesh.data=-1"])
    with pytest.raises(ConfigError, match="ppo.group_size=1 must be at least 2 for grpo"):
        load_config("tiny", ["ppo.algorithm=grpo", "ppo.group_size=1"])
    with pytest.raises(ConfigError, match="high_freq_factor=1.0 must be greater than "
                                          "model.rope_scaling.low_freq_factor=2.0"):
        load_config("tiny", ["model.rope_scaling.factor=8",
                             "model.rope_scaling.low_freq_factor=2",
                             "model.rope_scaling.high_freq_factor=1"])
    with pytest.raises(ConfigError, match="model.global_every=2 picks the global layers among "
                                          "sliding-window ones; set model.sliding_window too"):
        load_config("tiny", ["model.global_every=2"])
    with pytest.raises(ConfigError, match="model.attention=dot_product cannot soft-cap scores"):
        load_config("tiny", ["model.attention=dot_product", "model.attn_softcap=50"])
    with pytest.raises(ConfigError, match="model.splash_block=200 must be a multiple of 128"):
        load_config("tiny", ["model.splash_block=200"])
    with pytest.raises(ConfigError, match="data.seq_len=384 is not a multiple of "
                                          "model.splash_block=256"):
        load_config("tiny", ["model.attention=splash", "model.splash_block=256",
                             "data.seq_len=384", "model.max_seq_len=512"])
    load_config("tiny", ["model.attention=splash", "data.seq_len=128"])  # one shorter block


def test_a_yaml_file_with_an_invalid_value_names_the_key(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("base: tiny\ncheckpoint:\n  every: 0\n")
    with pytest.raises(ConfigError, match="^checkpoint.every=0 must be >= 1$"):
        load_config(str(path))


def test_unknown_keys_still_suggest_the_closest_one() -> None:
    with pytest.raises(ConfigError, match="did you mean 'checkpoint.every'"):
        load_config("tiny", ["checkpoint.evry=10"])
    with pytest.raises(ConfigError, match="did you mean 'train.log_every'"):
        load_config("tiny", ["train.log_evry=0"])


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
def test_every_preset_loads(preset: str) -> None:
    config = load_config(preset)
    assert config.train.steps >= 1 and config.checkpoint.every >= 1
