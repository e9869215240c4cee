import dataclasses

import pytest

from llm_jax.config import (ConfigError, all_keys, from_dict, load_config, load_yaml,
                            parse_overrides, save_config)

PRESETS = ["tiny", "small", "gpt2-124m", "llama3.2-1b", "llama3-8b"]


@pytest.mark.parametrize("name", PRESETS)
def test_presets_load(name):
    config = load_config(name)
    assert config.model.d_model > 0


def test_overrides_are_typed_and_nested():
    config = load_config("tiny", ["model.d_model=128", "optimizer.lr=1e-3", "model.qk_norm=true",
                                  "model.rope_scaling.factor=8", "data.source=jsonl:x.jsonl"])
    assert config.model.d_model == 128 and isinstance(config.model.d_model, int)
    assert config.optimizer.lr == 1e-3
    assert config.model.qk_norm is True
    assert config.model.rope_scaling.factor == 8.0
    assert config.data.source == "jsonl:x.jsonl"
    assert load_config("tiny").model.d_model == 256  # presets are not mutated


def test_unknown_key_names_the_closest_valid_key():
    with pytest.raises(ConfigError, match="did you mean 'model.num_kv_heads'"):
        load_config("tiny", ["model.num_kv_head=2"])
    with pytest.raises(ConfigError, match="did you mean 'optimizer.warmup_steps'"):
        load_config("tiny", ["optimiser.warmup_steps=3"])


@pytest.mark.parametrize("override, message", [
    ("model.num_kv_heads=3", "multiple of model.num_kv_heads"),
    ("model.norm=batchnorm", "model.norm='batchnorm' is not supported"),
    ("model.d_model=250", "not divisible by model.num_heads"),
    ("data.seq_len=4096", "exceeds model.max_seq_len"),
    ("train.batch_size=10", "not divisible by train.microbatches"),
    ("model.d_model=abc", "must be an integer"),
    ("mesh.data=0", "positive size or -1"),
])
def test_impossible_values_fail_with_what_to_change(override, message):
    overrides = [override] + (["train.microbatches=4"] if "microbatches" in message else [])
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", overrides)


def test_resolved_config_round_trips(tmp_path):
    config = load_config("llama3.2-1b", ["seed=7"])
    save_config(config, tmp_path / "config.yaml")
    assert from_dict(load_yaml(tmp_path / "config.yaml")) == config


def test_yaml_base_inherits_and_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("base: tiny\nmodel:\n  mlp: gelu\n")
    config = load_config(str(path))
    assert config.model.mlp == "gelu" and config.model.d_model == 256


def test_every_documented_key_exists():
    documented = ["run_dir", "seed", "model.vocab_size", "model.d_model", "model.num_layers",
                  "model.num_heads", "model.num_kv_heads", "model.mlp_dim", "model.max_seq_len",
                  "model.rope_theta", "model.tie_embeddings", "model.norm", "model.mlp",
                  "model.position", "model.qk_norm", "mesh.data", "mesh.fsdp", "mesh.tensor",
                  "mesh.pipe", "data.source", "data.seq_len", "tokenizer.path",
                  "tokenizer.vocab_size", "train.steps", "train.batch_size", "optimizer.lr",
                  "optimizer.warmup_steps", "optimizer.min_lr_ratio", "optimizer.weight_decay",
                  "optimizer.b1", "optimizer.b2", "optimizer.clip_norm", "checkpoint.every",
                  "eval.every"]
    assert set(documented) <= set(all_keys())


def test_parse_overrides_rejects_malformed():
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_overrides(["model.d_model"])


def test_configs_are_frozen():
    config = load_config("tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.model.d_model = 1
