"""A tiny model and checks for post-training tests on the word-reversal task
(`llm_jax.data.reversal`), asked in ChatML, built offline in seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from llm_jax.config import load_config
from llm_jax.data.reversal import (  # noqa: F401  (re-exported for the tests)
    near_miss,
    train_chat_tokenizer,
    words,
    write_jsonl,
    wrong_last_letter,
)
from llm_jax.train.loop import train
from llm_jax.train.metrics import read_metrics
from llm_jax.train.post_data import training_data

ROOT = Path(__file__).resolve().parents[1]
MODEL = ["model.vocab_size=304", "model.d_model=128", "model.num_layers=2", "model.num_heads=8",
         "model.num_kv_heads=4", "model.mlp_dim=128", "model.max_seq_len=64", "data.seq_len=64"]


def base_checkpoint(path: Path) -> Path:
    """A randomly initialized tiny model with the chat tokenizer, in our checkpoint layout."""
    from llm_jax import checkpoint
    from llm_jax.model import init_params

    config = load_config("tiny", MODEL + [f"run_dir={path}"])
    params = jax.jit(init_params, static_argnums=0)(config.model, jax.random.key(0))
    checkpoint.save_params(path, config, params)
    train_chat_tokenizer(path / checkpoint.TOKENIZER_DIR / "tokenizer.model")
    return path


def task_files(root: Path, train_words: Sequence[str]) -> dict[str, Path]:
    """The word-reversal records of every objective, written under `root`."""
    return {
        "sft": write_jsonl(root / "sft.jsonl", ({"prompt": w, "completion": w[::-1]}
                                                for w in train_words)),
        "pairs": write_jsonl(root / "pairs.jsonl", ({"prompt": w, "chosen": w[::-1],
                                                     "rejected": near_miss(w)}
                                                    for w in train_words)),
        "reward_pairs": write_jsonl(root / "reward_pairs.jsonl", (
            {"prompt": w, "chosen": w[::-1], "rejected": wrong_last_letter(w)}
            for w in train_words)),
        "prompts": write_jsonl(root / "prompts.jsonl", ({"prompt": w, "answer": w[::-1]}
                                                        for w in train_words)),
    }


def run_cli(args: Sequence[str], devices: int = 8, timeout: int = 600,
            succeeds: bool = True) -> str:
    """The command's output; it must exit 0 (or, with `succeeds=False`, fail)."""
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT / "tests")}  # rewards defined here
    process = subprocess.run([sys.executable, "-m", "llm_jax", *args], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             timeout=timeout)
    assert (process.returncode == 0) == succeeds, process.stdout
    return process.stdout


COMMON = ["optimizer.schedule=constant", "optimizer.weight_decay=0", "train.batch_size=16",
          "checkpoint.every=1000", "eval.every=0"]


def losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir)}


def train_on_8_devices(run_dir, *overrides):
    """The same run in this process, on its 8 devices: 2-way data, fsdp and tensor parallel."""
    config = load_config("tiny", MODEL + [f"run_dir={run_dir}", "train.log_every=1",
                                          "checkpoint.async_save=false", "mesh.data=2",
                                          "mesh.fsdp=2", "mesh.tensor=2", *overrides])
    train(config, training_data(config), progress=False)
    return losses(run_dir)


def assert_same_losses(eight, one, steps, atol=2e-5):
    assert sorted(eight) == list(range(1, steps + 1))
    np.testing.assert_allclose([eight[s] for s in sorted(eight)],
                               [one[s] for s in sorted(eight)], atol=atol)


def train_args(run_dir: Path, *overrides: str) -> list[str]:
    return ["train", "--config", "tiny", "--no-progress", f"run_dir={run_dir}", *MODEL,
            "train.log_every=1", "checkpoint.async_save=false", *overrides]


def reversal_prompts(template, held_out: Sequence[str]) -> list[list[int]]:
    return [template.encode_prompt([{"role": "user", "content": w}]).tolist() for w in held_out]


def exact_match(checkpoint_dir: Path, held_out: Sequence[str]) -> float:
    """Share of held-out words whose greedy reply is exactly their reversal."""
    from llm_jax.data.chat_format import make_template
    from llm_jax.infer.generator import Generator
    from llm_jax.infer.loading import load_model
    from llm_jax.infer.sampling import SamplingOptions

    model = load_model(checkpoint_dir)
    template = make_template("chatml", model.tokenizer)
    generator = Generator(model.config.model, model.params, eos_ids=template.stop_ids,
                          pad_id=model.tokenizer.pad_id, length_bucket=32)
    replies = generator.generate(reversal_prompts(template, held_out),
                                 SamplingOptions(max_new_tokens=8))
    right = 0
    for word, reply in zip(held_out, replies):
        body = [t for t in reply if t not in template.stop_ids]
        right += body == model.tokenizer.encode(word[::-1])
    return right / len(held_out)


def prefers_correct(checkpoint_dir: Path, held_out: Sequence[str]) -> float:
    """Share of held-out words whose correct reversal the model finds more likely than the
    near miss (summed log-probs of the reply tokens)."""
    import jax.numpy as jnp

    from llm_jax.data.chat_format import make_template
    from llm_jax.infer.loading import load_model
    from llm_jax.model import Transformer
    from llm_jax.train.logprobs import sequence_logprobs

    model = load_model(checkpoint_dir)
    template = make_template("chatml", model.tokenizer)
    length = model.config.data.seq_len

    def rows(answers):
        tokens = np.full((len(held_out), length), model.tokenizer.pad_id, np.int32)
        mask = np.zeros((len(held_out), length), np.float32)
        for i, (word, answer) in enumerate(zip(held_out, answers)):
            prompt = template.encode_prompt([{"role": "user", "content": word}])
            reply = template.encode_reply(answer).tokens
            tokens[i, :len(prompt) + len(reply)] = np.concatenate([prompt, reply])
            mask[i, len(prompt):len(prompt) + len(reply)] = 1
        return np.asarray(score(model.params, jnp.asarray(tokens), jnp.asarray(mask)))

    @jax.jit
    def score(params, tokens, mask):
        logits = Transformer(model.config.model).apply({"params": params}, tokens)
        return jnp.sum(sequence_logprobs(logits, tokens) * mask, axis=1)

    right = rows([w[::-1] for w in held_out])
    wrong = rows([near_miss(w) for w in held_out])
    return float(np.mean(right > wrong))


def letter_accuracy(prompts: Sequence[str], completions: Sequence[str],
                    records: Sequence[dict]) -> list[float]:
    """A dense programmatic reward for PPO: the share of the answer's letters that the reply
    has in the right place (extra letters count against it)."""
    scores = []
    for completion, record in zip(completions, records):
        answer, reply = record["answer"], completion.strip()
        right = sum(a == b for a, b in zip(answer, reply))
        scores.append(right / max(len(answer), len(reply), 1))
    return scores
