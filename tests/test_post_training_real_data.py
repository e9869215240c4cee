"""Real post-training data, excerpts in tests/fixtures: Alpaca's seed tasks and GSM8K for SFT,
HH-RLHF's harmless-base pairs for DPO. Each loads (its unusable records counted), trains a
short run on CPU, and its loss goes down."""

import json

import numpy as np
import pytest

from llm_jax.config import load_config
from llm_jax.data.tokenizer_training import train_tokenizer
from llm_jax.train.loop import train
from llm_jax.train.metrics import read_metrics
from llm_jax.train.post_data import training_data

MODEL = ["model.vocab_size=1024", "model.d_model=64", "model.num_layers=2", "model.num_heads=4",
         "model.num_kv_heads=2", "model.mlp_dim=128", "model.max_seq_len=256",
         "data.seq_len=256"]
SHORT = ["train.steps=8", "train.batch_size=8", "train.log_every=1", "optimizer.lr=3e-3",
         "optimizer.warmup_steps=2", "optimizer.schedule=constant", "eval.every=0",
         "eval.steps=1", "checkpoint.every=1000", "checkpoint.async_save=false"]


def texts(real_data):
    with open(real_data / "alpaca-seed-tasks.jsonl") as f:
        for line in f:
            record = json.loads(line)
            yield record["instruction"]
            for instance in record["instances"]:
                yield instance["input"]
                yield instance["output"]
    with open(real_data / "gsm8k-train.jsonl") as f:
        for line in f:
            record = json.loads(line)
            yield record["question"]
            yield record["answer"]
    with open(real_data / "hh-rlhf-harmless-base-test.jsonl") as f:
        for line in f:
            yield json.loads(line)["chosen"]


@pytest.fixture(scope="module")
def tokenizer(real_data, tmp_path_factory):
    """A 1024-token BPE on the three data sets, with the ChatML tokens."""
    lines = [line for text in texts(real_data) for line in text.split("\n") if line.strip()]
    return train_tokenizer(lines, tmp_path_factory.mktemp("tok") / "tokenizer.model", 1024)


def run(tmp_path, tokenizer, objective, data, *extra):
    config = load_config("tiny", MODEL + SHORT + [
        f"run_dir={tmp_path}", f"tokenizer.path={tokenizer}", f"train.objective={objective}",
        f"post.data={data}", *extra])
    result = train(config, training_data(config), progress=False)
    report = json.loads((tmp_path / "post_data.json").read_text())
    return result, report, [r["loss"] for r in read_metrics(tmp_path)]


def test_sft_on_alpaca_seed_tasks(real_data, tokenizer, tmp_path):
    result, report, loss = run(tmp_path, tokenizer, "sft", real_data / "alpaca-seed-tasks.jsonl",
                               "post.max_skipped_fraction=0.4")
    assert report["records"] == 32
    # one example per instance; those longer than 256 tokens are counted, not cut
    assert report["examples"] + sum(report["skipped"].values()) >= 32
    assert set(report["skipped"]) <= {"too_long", "prompt_too_long"}
    assert report["examples"] > 18
    assert result.step == 8 and np.mean(loss[-3:]) < loss[0] - 0.3


def test_sft_on_gsm8k(real_data, tokenizer, tmp_path):
    result, report, loss = run(tmp_path, tokenizer, "sft", real_data / "gsm8k-train.jsonl",
                               "post.max_skipped_fraction=0.5")
    assert report["records"] == 32
    assert set(report["skipped"]) <= {"too_long", "prompt_too_long"}  # over 256 tokens
    assert report["examples"] > 0.5 * 32
    assert np.mean(loss[-3:]) < loss[0] - 0.5


def test_dpo_on_hh_rlhf(real_data, tokenizer, tmp_path):
    result, report, loss = run(tmp_path, tokenizer, "dpo",
                               real_data / "hh-rlhf-harmless-base-test.jsonl",
                               "post.max_skipped_fraction=0.5", "optimizer.lr=1e-3")
    assert report["records"] == 32
    # some HH-RLHF replies are empty: counted, never trained on
    assert set(report["skipped"]) <= {"prompt_too_long", "identical_after_truncation",
                                      "empty_completion"}
    assert report["examples"] > 16
    assert loss[0] == pytest.approx(np.log(2), abs=1e-5)  # the policy starts as the reference
    assert np.mean(loss[-3:]) < loss[0]
