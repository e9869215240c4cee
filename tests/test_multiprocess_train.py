"""Training on several real processes (simulated hosts joined by `jax.distributed`) sees the
global batches of one process: pretraining, SFT, DPO (reference model and precomputed), the
reward model, PPO and GRPO (rollouts sampled on the global mesh) log the losses and held-out
metrics of 1 process x 8 devices on 2 x 4, and a run written by 2 x 4 resumes on 1 x 8 and
on 4 x 2 with the data continuing where it stopped."""

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from post_training_factory import (MODEL, base_checkpoint, near_miss, train_chat_tokenizer,
                                   words, write_jsonl, wrong_last_letter)

from llm_jax.config import load_config
from llm_jax.data.curate import curate
from llm_jax.parallel.launch import launch
from llm_jax.train.metrics import METRICS_FILE

STEPS = 6
COMMON = [*MODEL, "train.batch_size=8", "train.log_every=1", "optimizer.warmup_steps=2",
          "optimizer.lr=3e-3", "checkpoint.async_save=false", "checkpoint.every=3"]
LAYOUTS = {"2x4": (2, 4), "1x8": (1, 8), "4x2": (4, 2)}


def run(layout: str, run_dir: Path, *overrides: str) -> None:
    processes, devices = LAYOUTS[layout]
    out = io.StringIO()
    code = launch(["train", "--config", "tiny", "--no-progress", f"run_dir={run_dir}", *COMMON,
                   *overrides], processes=processes, devices=devices, timeout=600, out=out)
    assert code == 0, out.getvalue()


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]


def assert_same_metrics(got: list[dict], expected: list[dict], keys=("loss",)) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in expected]
    for key in keys:
        np.testing.assert_allclose([r[key] for r in got if key in r],
                                   [r[key] for r in expected if key in r], atol=1e-5, rtol=0)
        assert sum(key in r for r in got) == sum(key in r for r in expected) > 0


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A pass-through curated corpus of word lines, the chat tokenizer, post-training records
    and a random base checkpoint to start post-training from."""
    root = tmp_path_factory.mktemp("inputs")
    vocabulary = words(600)
    rng = np.random.default_rng(0)
    text = write_jsonl(root / "words.jsonl", (
        {"text": " ".join(rng.choice(vocabulary, int(rng.integers(5, 40))))} for _ in range(160)))
    curate(load_config("tiny", [f"run_dir={root}", f"data.source=jsonl:{text}",
                                "curate.prose_steps=", "curate.code_steps=", "curate.tasks=1"]),
           progress=False)
    tokenizer = train_chat_tokenizer(root / "tokenizer" / "tokenizer.model")
    return {
        "corpus": [f"data.curated_dir={root / 'curated'}", f"tokenizer.path={tokenizer}",
                   "data.eval_fraction=0.1"],
        "pairs": write_jsonl(root / "pairs.jsonl", ({"prompt": w, "chosen": w[::-1],
                                                     "rejected": near_miss(w)}
                                                    for w in vocabulary[:200])),
        "sft": write_jsonl(root / "sft.jsonl", ({"prompt": w, "completion": w[::-1]}
                                                for w in vocabulary[:200])),
        "prompts": write_jsonl(root / "prompts.jsonl", ({"prompt": w, "answer": w[::-1]}
                                                        for w in vocabulary[:200])),
        "reward_pairs": write_jsonl(root / "reward.jsonl", (
            {"prompt": w, "chosen": w[::-1], "rejected": wrong_last_letter(w)}
            for w in vocabulary[:200])),
        "base": base_checkpoint(root / "base"),
    }


@pytest.fixture(scope="module")
def pretraining(inputs, tmp_path_factory):
    """The same pretraining run on 2 processes x 4 devices and on 1 x 8."""
    dirs = {}
    for layout in ("2x4", "1x8"):
        dirs[layout] = tmp_path_factory.mktemp(f"lm{layout}")
        run(layout, dirs[layout], *inputs["corpus"], f"train.steps={STEPS}", "eval.every=3",
            "eval.steps=2")
    return dirs


def test_pretraining_on_two_processes_logs_the_losses_and_evals_of_one(pretraining):
    two, one = records(pretraining["2x4"]), records(pretraining["1x8"])
    assert [r["step"] for r in two] == list(range(1, STEPS + 1))  # each step logged once
    assert_same_metrics(two, one, keys=("loss", "eval_loss", "eval_bpb"))


@pytest.mark.parametrize("layout", ["1x8", "4x2"])
def test_a_two_process_run_resumes_on_another_process_count(pretraining, inputs, layout,
                                                            tmp_path):
    """The 2 x 4 run's checkpoint of step 3, resumed on `layout`, continues with the losses of
    the uninterrupted run: the data of every shard continues where it stopped."""
    resumed = tmp_path / "run"
    shutil.copytree(pretraining["2x4"], resumed)
    shutil.rmtree(resumed / "checkpoints" / str(STEPS))
    run(layout, resumed, *inputs["corpus"], f"train.steps={STEPS}", "eval.every=3",
        "eval.steps=2")
    assert_same_metrics(records(resumed), records(pretraining["2x4"]),
                        keys=("loss", "eval_loss"))


ROLLOUTS = ["ppo.reward=post_training_factory:letter_accuracy", "post.data={prompts}",
            "ppo.max_new_tokens=8", "ppo.minibatches=2", "ppo.epochs=2"]
# objective -> (settings, metrics that must match 1 x 8). SFT's eval packs another number of
# batches on each process (eval.steps=0: the whole held-out pass); PPO's held-out metric is
# the score of greedy replies sampled on the global mesh.
POST = {
    "sft": (["train.objective=sft", "post.data={sft}", "eval.steps=0"], ("loss", "eval_loss")),
    "dpo-model": (["train.objective=dpo", "dpo.reference=model", "post.data={pairs}"],
                  ("loss", "eval_loss")),
    "dpo-precomputed": (["train.objective=dpo", "dpo.reference=precomputed",
                         "post.data={pairs}"], ("loss", "eval_loss")),
    "reward": (["train.objective=reward", "post.data={reward_pairs}"], ("loss", "eval_loss")),
    "ppo": (["train.objective=ppo", *ROLLOUTS], ("loss", "score", "kl", "eval_score")),
    "grpo": (["train.objective=ppo", "ppo.algorithm=grpo", "ppo.group_size=2", *ROLLOUTS],
             ("loss", "score", "eval_score")),
}


@pytest.mark.parametrize("objective", sorted(POST))
def test_post_training_on_two_processes_logs_the_losses_of_one(inputs, objective, tmp_path,
                                                              monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # the PPO reward's module
    settings, keys = POST[objective]
    overrides = [o.format(**inputs) for o in settings]
    got = {}
    for layout in ("2x4", "1x8"):
        run_dir = tmp_path / layout
        run(layout, run_dir, f"train.init_from={inputs['base']}", "train.steps=3",
            "post.eval_fraction=0.1", "eval.every=3", "eval.steps=2", *overrides)
        got[layout] = records(run_dir)
    assert [r["step"] for r in got["2x4"]] == [1, 2, 3]
    assert_same_metrics(got["2x4"], got["1x8"], keys=keys)
