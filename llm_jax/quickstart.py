"""`llm-jax quickstart`: the whole path from raw text to a model that writes, on a laptop CPU.

It curates the built-in corpus (the Python standard library's own source and documentation),
trains a SentencePiece BPE tokenizer on it, pretrains the `tiny` Llama, reports held-out loss
and bits per byte, plots the loss curve and prints samples. Every stage is the same code the
`curate`, `tokenizer`, `train` and `generate` commands run; finished stages are skipped when
the command is run again in the same directory, and training resumes from its last checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path

from llm_jax.config import Config, load_config

SAMPLE_PROMPTS = ("def ", "import os\n", "The ")


def plot_loss_curve(run_dir: str | Path, out: str | Path) -> Path:
    """Training loss (and eval loss where measured) against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from llm_jax.train.metrics import read_metrics

    records = read_metrics(run_dir)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], label="train loss")
    evals = [r for r in records if "eval_loss" in r]
    if evals:
        ax.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-",
                label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(f"llm-jax quickstart: {Path(run_dir).name}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)


def print_samples(run_dir: str | Path, prompts=SAMPLE_PROMPTS, max_new_tokens: int = 48) -> None:
    from llm_jax.infer.completion import complete
    from llm_jax.infer.loading import load_model
    from llm_jax.infer.sampling import SamplingOptions

    loaded = load_model(run_dir)
    options = SamplingOptions(max_new_tokens=max_new_tokens, temperature=0.8, top_p=0.95,
                              seed=0)
    for prompt, completion in zip(prompts, complete(loaded.generator(), loaded.tokenizer,
                                                    list(prompts), options)):
        print(f"--- sample (prompt {prompt!r}, temperature 0.8, top-p 0.95)")
        print(prompt + completion.text)


def run_quickstart(out: str | Path, overrides: tuple[str, ...] = ()) -> Config:
    from llm_jax.data.curate import curate
    from llm_jax.data.tokenizer_training import train_from_config
    from llm_jax.train.data import TrainingData
    from llm_jax.train.loop import train

    config = load_config("quickstart", [f"run_dir={out}", *overrides])
    started = time.perf_counter()
    print(f"[1/4] curating the built-in corpus ({config.data.source}) into {out}/curated")
    report = curate(config)
    print(f"      kept {report['documents_out']} of {report['documents_in']} documents; "
          f"each step's effect is in {out}/curated/report.json")
    print(f"[2/4] training a {config.tokenizer.vocab_size}-token SentencePiece BPE tokenizer")
    train_from_config(config)
    print(f"[3/4] pretraining a {config.model.num_layers}-layer Llama for "
          f"{config.train.steps} steps")
    data = TrainingData(config)
    result = train(config, data)
    png = plot_loss_curve(config.run_dir, Path(config.run_dir) / "loss_curve.png")
    print(f"[4/4] held-out: loss {result.eval.get('eval_loss', float('nan')):.3f} nats/token, "
          f"{result.eval.get('eval_bpb', float('nan')):.3f} bits per byte; "
          f"loss curve {png}")
    print_samples(config.run_dir)
    minutes = (time.perf_counter() - started) / 60
    print(f"done in {minutes:.1f} min. Next: llm-jax generate --checkpoint {out} --prompt 'def '")
    return config
