"""A verifiable task and a tiny model for post-training tests, built offline in seconds.

The task is reversing a word of 3 to 5 random letters ("abc" -> "cba"), asked in ChatML. The
tokenizer is our own SentencePiece BPE trained with exactly the vocabulary its text needs, so
it has no merges: every letter is one token, and `<|im_start|>` / `<|im_end|>` are one each.
"""

from __future__ import annotations

import json
import os
import random
import string
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Sequence

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 299  # 256 bytes + 4 specials + 2 chat tokens + the characters below: no merges
MODEL = ["model.vocab_size=304", "model.d_model=128", "model.num_layers=2", "model.num_heads=8",
         "model.num_kv_heads=4", "model.mlp_dim=128", "model.max_seq_len=64", "data.seq_len=64"]


def words(count: int = 3000, seed: int = 0) -> list[str]:
    """Distinct random lowercase words of 3 to 5 letters, in random order."""
    rng = random.Random(seed)
    out = sorted({"".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 5)))
                  for _ in range(count)})
    rng.shuffle(out)
    return out


def near_miss(word: str) -> str:
    """A wrong answer close to the right one: the reversal with two letters swapped, or the
    word itself when swapping changes nothing."""
    answer = word[::-1]
    for i in range(len(answer) - 1):
        wrong = answer[:i] + answer[i + 1] + answer[i] + answer[i + 2:]
        if wrong != answer:
            return wrong
    return word if word != answer else word + word[0]


def wrong_last_letter(word: str) -> str:
    """The reversal with its last letter changed: a mistake a reward model can learn to see
    from the end of the reply."""
    answer = word[::-1]
    return answer[:-1] + chr((ord(answer[-1]) - ord("a") + 1) % 26 + ord("a"))


def write_jsonl(path: Path, records: Iterable[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return path


def train_chat_tokenizer(model_file: Path) -> Path:
    from llm_jax.data.tokenizer import train_tokenizer

    lines = ["user", "assistant", "system"] + words(500, seed=99) + list(string.ascii_lowercase)
    return train_tokenizer(lines, model_file, VOCAB)


def base_checkpoint(path: Path) -> Path:
    """A randomly initialized tiny model with the chat tokenizer, in our checkpoint layout."""
    from llm_jax.config import load_config
    from llm_jax.model import init_params
    from llm_jax.train import checkpoint

    config = load_config("tiny", MODEL + [f"run_dir={path}"])
    params = jax.jit(init_params, static_argnums=0)(config.model, jax.random.key(0))
    checkpoint.save_params(path, config, params)
    train_chat_tokenizer(path / checkpoint.TOKENIZER_DIR / "tokenizer.model")
    return path


def run_cli(args: Sequence[str], devices: int = 8, timeout: int = 600) -> str:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT / "tests")}  # rewards defined here
    process = subprocess.run([sys.executable, "-m", "llm_jax", *args], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             timeout=timeout)
    assert process.returncode == 0, process.stdout
    return process.stdout


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
