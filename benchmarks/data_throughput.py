"""Input pipeline tokens/s next to the train step's consumption, for the tiny and a 1B config.

    python benchmarks/data_throughput.py [--run-dir runs/tiny] [--seconds 10] [--no-train]

The loader must never be the bottleneck: its tokens/s (one host, this machine's CPU cores) should
stay above what the train step consumes per host. Both configs read the curated corpus and the
tokenizer of `--run-dir` (made by `llm-jax curate` and `llm-jax tokenizer --config tiny`, which
this script runs first if they are missing); the 1B row keeps llama3.2-1b's sequence length and
batch size, so it measures the loader at that shape (the vocabulary size barely changes encoding
cost). Tokens are real target tokens (loss_mask = 1); padding does not count.

The train column is `train_step_tokens_per_second`: the jitted train step on synthetic batches
on this process's devices, or "-" where that is not measured (a 1B model is not stepped on CPU).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from llm_jax.config import Config, load_config

CONFIGS = {"tiny": "tiny", "1B (llama3.2-1b shape)": "llama3.2-1b"}
MAX_CPU_PARAMS = 100e6  # larger models are not stepped on CPU


def prepare(run_dir: str) -> None:
    """Curated corpus and tokenizer of the tiny config in `run_dir`, made if missing."""
    from llm_jax.data.corpus import is_complete
    from llm_jax.data.curate import curate
    from llm_jax.data.tokenizer_training import train_from_config

    config = load_config("tiny", [f"run_dir={run_dir}"])
    if not is_complete(os.path.join(run_dir, "curated")):
        curate(config)
    train_from_config(config)


def loader_tokens_per_second(config: Config, tokenizer: Any, seconds: float) -> dict[str, float]:
    """Real tokens/s of `make_batch_iterator` on this host, after the first batch."""
    from llm_jax.data.pipeline import batch_tokens, make_batch_iterator

    iterator = make_batch_iterator(config, tokenizer, process_index=0, process_count=1)
    first = next(iterator)
    capacity = first["loss_mask"].size
    tokens = batches = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        tokens += batch_tokens(next(iterator))
        batches += 1
    elapsed = time.perf_counter() - start
    return {"tokens_per_s": tokens / elapsed, "batches": batches,
            "padding": 1 - tokens / (batches * capacity)}


def train_step_tokens_per_second(config: Config, steps: int = 3) -> float | None:
    """Tokens/s the jitted train step consumes on this process's devices (synthetic batches),
    or None where it is not measured: no accelerator for a large model, or no train step."""
    import jax

    if jax.default_backend() == "cpu" and _approx_params(config) > MAX_CPU_PARAMS:
        return None
    try:
        from llm_jax.parallel.mesh import make_mesh
        from llm_jax.train.build import build_training
        from llm_jax.train.synthetic import seconds_per_step
    except ImportError:
        return None
    training = build_training(config, make_mesh(config))
    seconds = seconds_per_step(training, steps)
    rows, length = config.train.batch_size, config.data.seq_len
    return rows * length / seconds / jax.process_count()


def _approx_params(config: Config) -> float:
    m = config.model
    head_dim = m.resolved_head_dim
    attention = m.d_model * head_dim * (2 * m.num_heads + 2 * m.num_kv_heads)
    mlp = 3 * m.d_model * m.mlp_dim
    return m.num_layers * (attention + mlp) + 2 * m.vocab_size * m.d_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", default="runs/tiny", help="has curated/ and tokenizer/")
    parser.add_argument("--seconds", type=float, default=10.0, help="loader time per row")
    parser.add_argument("--no-train", action="store_true", help="skip the train step column")
    args = parser.parse_args()

    from llm_jax.data.pretokenize import pretokenize
    from llm_jax.data.tokenizer import SentencePieceTokenizer

    prepare(args.run_dir)
    shared = [f"run_dir={args.run_dir}", f"tokenizer.path={args.run_dir}/tokenizer/tokenizer.model",
              f"data.curated_dir={args.run_dir}/curated", f"data.tokens_dir={args.run_dir}/tokens"]
    tokenizer = SentencePieceTokenizer.load(f"{args.run_dir}/tokenizer/tokenizer.model")
    pretokenize(load_config("tiny", shared), tokenizer, progress=False)

    print(f"one host, {os.cpu_count()} CPU cores; corpus {args.run_dir}/curated, "
          f"tokenizer {tokenizer.vocab_size} tokens\n")
    print("| config | batch x seq | packing | input | loader tokens/s | padding "
          "| train step tokens/s | loader / train |\n|---|---|---|---|---|---|---|---|")
    for label, preset in CONFIGS.items():
        base = load_config(preset, shared)
        train = None if args.no_train else train_step_tokens_per_second(base)
        for packing in ("pack", "concat"):
            for pretokenized in (False, True):
                config = load_config(preset, [*shared, f"data.packing={packing}",
                                              f"data.pretokenized={pretokenized}"])
                result = loader_tokens_per_second(config, tokenizer, args.seconds)
                ratio = f"{result['tokens_per_s'] / train:.1f}x" if train else "-"
                print(f"| {label} | {config.train.batch_size} x {config.data.seq_len} | {packing} "
                      f"| {'token ids' if pretokenized else 'text'} | {result['tokens_per_s']:,.0f} "
                      f"| {result['padding']:.1%} | {f'{train:,.0f}' if train else '-'} | {ratio} |",
                      flush=True)


if __name__ == "__main__":
    main()
