"""LoRA and QLoRA post-training end to end with `llm-jax train`, on the word-reversal task:
adapters alone lift exact match on held-out words, the exported merged model and the PEFT
adapter compute in `transformers` / `peft` what our model computes, DPO's reference is the
frozen base (no copy), reward models and PPO train their heads beside the adapters, and
8 devices log the losses of one."""

import json

import numpy as np
import pytest
import torch

from llm_jax.infer.loading import load_model
from llm_jax.model import Transformer
from llm_jax.train.metrics import read_metrics
from post_training_factory import (COMMON, assert_same_losses, base_checkpoint, exact_match,
                                   losses, run_cli, task_files, train_args, train_on_8_devices,
                                   words)

RANK = "model.lora.rank=16"
SFT = ["train.objective=sft", "optimizer.warmup_steps=10", *COMMON]
LORA = [RANK, "optimizer.lr=1e-2"]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A base that has seen 60 full-SFT steps (3% exact match): LoRA from a random model,
    its embeddings frozen, barely learns (loss 5.2 -> 5.0 in 100 steps)."""
    root = tmp_path_factory.mktemp("lora")
    vocabulary = words()
    train_words, held_out = vocabulary[:2500], vocabulary[2500:2700]
    files = task_files(root, train_words)
    random_model = base_checkpoint(root / "random")
    run_cli(train_args(root / "base", f"train.init_from={random_model}",
                       f"post.data={files['sft']}", "train.steps=60", "optimizer.lr=3e-3",
                       "optimizer.warmup_steps=20", "train.objective=sft", *COMMON), devices=1)
    return root, root / "base", files, held_out


@pytest.fixture(scope="module")
def lora_sft(task):
    root, base, files, _ = task
    run_cli(train_args(root / "lora_sft", f"train.init_from={base}", f"post.data={files['sft']}",
                       "train.steps=100", *SFT, *LORA), devices=1)
    return root / "lora_sft"


def test_lora_sft_learns_with_the_base_frozen(task, lora_sft):
    _, base, _, held_out = task
    before, after = exact_match(base, held_out), exact_match(lora_sft, held_out)
    assert before < 0.1 and after > 0.5  # measured: 0.03 -> 0.69
    records = read_metrics(lora_sft)
    assert records[-1]["eval_loss"] < 0.6 * records[0]["loss"]
    frozen, adapted = load_model(base).params, load_model(lora_sft).params
    blocks = adapted["layers"]["blocks"]
    np.testing.assert_array_equal(blocks["mlp"]["up"], frozen["layers"]["blocks"]["mlp"]["up"])
    np.testing.assert_array_equal(adapted["embed"]["embedding"], frozen["embed"]["embedding"])
    assert np.abs(np.asarray(blocks["mlp"]["up_lora_b"])).max() > 0


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(tokens, dtype=torch.long)).logits.float().numpy()


def our_logits(run_dir, tokens: np.ndarray) -> np.ndarray:
    loaded = load_model(run_dir)
    return np.asarray(Transformer(loaded.config.model).apply({"params": loaded.params}, tokens))


def test_merged_and_peft_exports_compute_what_the_run_computes(task, lora_sft, tmp_path):
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    _, base, _, _ = task
    tokens = np.random.default_rng(0).integers(0, 304, (2, 40))
    ours = our_logits(lora_sft, tokens)

    run_cli(["export-hf", "--checkpoint", str(lora_sft), "--out", str(tmp_path / "merged"),
             "--merge-lora"], devices=1)
    merged = LlamaForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    np.testing.assert_allclose(hf_logits(merged, tokens), ours, atol=1e-4)

    run_cli(["export-hf", "--checkpoint", str(base), "--out", str(tmp_path / "base")], devices=1)
    run_cli(["export-hf", "--checkpoint", str(lora_sft), "--out", str(tmp_path / "adapter"),
             "--peft"], devices=1)
    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 16 and "gate_proj" in adapter_config["target_modules"]
    peft_model = PeftModel.from_pretrained(
        LlamaForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32),
        tmp_path / "adapter")
    np.testing.assert_allclose(hf_logits(peft_model, tokens), ours, atol=1e-4)
    without = hf_logits(LlamaForCausalLM.from_pretrained(tmp_path / "base",
                                                          dtype=torch.float32), tokens)
    assert np.abs(without - ours).max() > 0.1  # the adapters change the function

    plain = run_cli(["export-hf", "--checkpoint", str(lora_sft), "--out", str(tmp_path / "x")],
                    devices=1, succeeds=False)
    assert "--merge-lora" in plain and "Traceback" not in plain


def test_qlora_nf4_learns_and_8_devices_log_the_losses_of_one(task, tmp_path):
    root, base, files, held_out = task
    settings = [f"train.init_from={base}", f"post.data={files['sft']}", *SFT, *LORA,
                "model.lora.quantize=nf4"]
    run = root / "qlora"
    run_cli(train_args(run, *settings, "train.steps=100"), devices=1)
    assert exact_match(run, held_out) > 0.5  # measured: 0.82
    codes = load_model(run).params["layers"]["blocks"]["attn"]["q"]["codes"]
    assert codes.dtype == np.uint8
    # 4 kv heads x 16 is one nf4 block, which a tensor axis cannot split: fsdp=4 instead
    eight = train_on_8_devices(tmp_path, *settings, "train.steps=11", "mesh.fsdp=4",
                               "mesh.tensor=1")
    assert_same_losses(eight, losses(run), 11, atol=1e-4)


def test_resumed_lora_run_equals_an_uninterrupted_one(task, tmp_path):
    _, base, files, _ = task
    settings = [f"train.init_from={base}", f"post.data={files['sft']}", *SFT, *LORA,
                "model.lora.quantize=int8", "checkpoint.every=4",
                "optimizer.warmup_steps=0"]  # a schedule that does not depend on train.steps
    run_cli(train_args(tmp_path / "whole", *settings, "train.steps=8"), devices=1)
    run_cli(train_args(tmp_path / "parts", *settings, "train.steps=4"), devices=1)
    resumed = run_cli(train_args(tmp_path / "parts", *settings, "train.steps=8"), devices=1)
    assert "resumed" in resumed
    assert_same_losses(losses(tmp_path / "parts"), losses(tmp_path / "whole"), 8, atol=1e-6)


def test_lora_dpo_compares_with_the_frozen_base(task, lora_sft):
    """From the LoRA SFT run, whose adapters `train.init_from` merges into the base."""
    root, _, files, held_out = task
    run = root / "lora_dpo"
    run_cli(train_args(run, f"train.init_from={lora_sft}", f"post.data={files['pairs']}",
                       "train.objective=dpo", "optimizer.lr=1e-3", "optimizer.warmup_steps=5",
                       "train.steps=40", *COMMON, "eval.every=40", RANK), devices=1)
    records = read_metrics(run)
    assert records[0]["loss"] == pytest.approx(np.log(2), abs=1e-5)  # policy == reference
    assert records[-1]["eval_rewards_accuracies"] > 0.85  # measured: 0.92
    assert not list((run / "checkpoints").glob("*/reference"))  # no second copy
    assert exact_match(run, held_out) > 0.5  # DPO kept what SFT taught (measured 0.68)


def test_lora_reward_model_and_ppo_train_their_heads(task, lora_sft, tmp_path):
    _, base, files, _ = task
    reward = tmp_path / "reward"
    run_cli(train_args(reward, f"train.init_from={base}", f"post.data={files['reward_pairs']}",
                       "train.objective=reward", "optimizer.lr=3e-3", "optimizer.warmup_steps=5",
                       "train.steps=60", *COMMON, "eval.every=20", RANK), devices=1)
    accuracy = [r["eval_accuracy"] for r in read_metrics(reward) if "eval_accuracy" in r]
    assert accuracy[-1] > 0.75 and accuracy[-1] > accuracy[0]
    assert np.abs(np.asarray(load_model(reward).params["score_head"]["kernel"])).max() > 0

    ppo = tmp_path / "ppo"
    run_cli(train_args(ppo, f"train.init_from={lora_sft}", f"post.data={files['prompts']}",
                       "train.objective=ppo", "ppo.reward=post_training_factory:letter_accuracy",
                       "ppo.max_new_tokens=8", "ppo.minibatches=2", "optimizer.lr=1e-3",
                       "optimizer.warmup_steps=2", "train.steps=4", *COMMON, RANK),
            devices=1)
    records = read_metrics(ppo)
    assert records[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # the policy starts as the base
    assert all(np.isfinite(r["value_loss"]) for r in records)
    assert max(r["kl"] for r in records) > 0  # the adapters moved the policy
