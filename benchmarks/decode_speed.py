"""Decode speed: our KV-cache generator against `transformers`' `generate`, same model and batch.

A random Llama is built in transformers, saved, and imported with our converter, so both sides
run the very same weights; both decode greedily for exactly `--new-tokens` tokens (no EOS).
Decode tokens/s excludes the prompt: it is batch * (new - 1) / (time(new) - time(1)), where
time(1) is a run that only prefills and picks the first token. Our compile time is reported
separately and excluded from the timed runs. Greedy outputs are compared as a sanity check.

    python benchmarks/decode_speed.py [--batch 4 --prompt-len 64 --new-tokens 64 ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import jax
import numpy as np
import torch
import transformers

from llm_jax.convert.hf_import import read_hf_checkpoint
from llm_jax.infer.generator import Generator
from llm_jax.infer.sampling import SamplingOptions


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--mlp-dim", type=int, default=704)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    return p.parse_args()


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    hf_config = transformers.LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.d_model, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        intermediate_size=args.mlp_dim, max_position_embeddings=args.prompt_len + args.new_tokens,
        tie_word_embeddings=False)
    hf = transformers.LlamaForCausalLM(hf_config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        model_config, params = read_hf_checkpoint(tmp)
    generator = Generator(model_config, jax.device_put(params), eos_ids=(), length_bucket=64)
    params_m = sum(p.numel() for p in hf.parameters()) / 1e6
    print(f"model: {params_m:.1f}M params, d_model {args.d_model}, {args.layers} layers, "
          f"{args.heads}/{args.kv_heads} heads, vocab {args.vocab}; prompt {args.prompt_len}, "
          f"{args.new_tokens} new tokens, greedy, fp32")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), transformers {transformers.__version__}")

    rows = []
    for batch in args.batch:
        prompts = np.random.RandomState(batch).randint(3, args.vocab, (batch, args.prompt_len))
        token_prompts = prompts.tolist()

        def ours(n: int) -> list[list[int]]:
            return generator.generate(token_prompts, SamplingOptions(max_new_tokens=n))

        def theirs(n: int) -> list[list[int]]:
            with torch.no_grad():
                out = hf.generate(torch.tensor(prompts), attention_mask=torch.ones_like(
                    torch.tensor(prompts)), do_sample=False, max_new_tokens=n, min_new_tokens=n,
                    pad_token_id=0)
            return out[:, args.prompt_len:].tolist()

        start = time.perf_counter()
        ours(1), ours(args.new_tokens)
        compile_s = time.perf_counter() - start
        same = ours(args.new_tokens) == theirs(args.new_tokens)
        for name, fn, extra in (("llm_jax (jit, KV cache)", ours, f"{compile_s:.1f}"),
                                ("transformers generate", theirs, "-")):
            first = best_time(lambda: fn(1), args.repeats)
            full = best_time(lambda: fn(args.new_tokens), args.repeats)
            # Too few new tokens for the timer: the difference drowns in noise.
            decode_rate = (f"{batch * (args.new_tokens - 1) / (full - first):,.0f}"
                           if full > 1.05 * first else "n/a")
            rows.append((name, batch, f"{first * 1e3:.1f}", decode_rate,
                         f"{batch * args.new_tokens / full:,.0f}", extra,
                         "yes" if same else "NO"))

    header = ("implementation", "batch", "prefill+1 ms", "decode tok/s", "end-to-end tok/s",
              "compile s", "same tokens")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]

    def line(row) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |"

    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))
    ratios = []
    for i, batch in enumerate(args.batch):
        ours, theirs = rows[2 * i][3], rows[2 * i + 1][3]
        if "n/a" not in (ours, theirs):
            ratio = float(ours.replace(",", "")) / float(theirs.replace(",", ""))
            ratios.append(f"batch {batch}: {ratio:.2f}x")
    print("decode speed ratio llm_jax / transformers: " + (", ".join(ratios) or "n/a"))


if __name__ == "__main__":
    main()
