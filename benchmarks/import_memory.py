"""Peak host memory of `llm-jax import-hf` on a Llama-3.2-1B-shaped checkpoint.

A random bf16 Llama of the 1B shape is saved with `transformers` (built on the meta device and
filled with small random values, so no slow initialization), then imported in a child process,
which reports its resident set just before the import and its peak during it (VmHWM, reset
first). The peak is printed next to the largest Hugging Face tensor (bf16) and our largest
stacked fp32 parameter: a streamed import peaks at a small multiple of those, not of the model.

    python benchmarks/import_memory.py [--dir D] [--keep]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import torch
import transformers
from safetensors import safe_open

from llm_jax import checkpoint
from llm_jax.model.heads import abstract_train_params

LLAMA_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                max_position_embeddings=131072, rope_theta=500000.0, tie_word_embeddings=True)

# Runs in the child: memory is read from /proc, so only the import itself is counted.
CHILD = """
import json, sys
import jax, orbax.checkpoint  # noqa: F401  (their import is not the import's memory)
from llm_jax.convert.hf_import import import_hf_checkpoint

def status(key):
    line = next(l for l in open("/proc/self/status") if l.startswith(key + ":"))
    return int(line.split()[1]) * 1024

open("/proc/self/clear_refs", "w").write("5")  # resets VmHWM to the current RSS
before = status("VmRSS")
import_hf_checkpoint(sys.argv[1], sys.argv[2])
print(json.dumps({"rss_before": before, "peak": status("VmHWM")}))
"""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", help="work directory (default: a temporary one, removed after)")
    p.add_argument("--keep", action="store_true", help="keep the Hugging Face checkpoint in --dir")
    return p.parse_args()


def save_random_llama(path: Path) -> None:
    """A random bf16 Llama of the 1B shape, written the way the hub ships it."""
    config = transformers.LlamaConfig(**LLAMA_1B, torch_dtype="bfloat16")
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    model.to_empty(device="cpu")
    model.tie_weights()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    model.save_pretrained(path)


def largest_hf_tensor_bytes(path: Path) -> int:
    largest = 0
    for file in path.glob("*.safetensors"):
        with safe_open(file, framework="numpy") as f:
            for name in f.keys():
                largest = max(largest, math.prod(f.get_slice(name).get_shape()) * 2)  # bf16
    return largest


def main() -> None:
    args = parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="import_memory_"))
    hf_dir, out = work / "hf", work / "ours"
    if not (hf_dir / "config.json").exists():
        start = time.perf_counter()
        save_random_llama(hf_dir)
        print(f"saved a random Llama-3.2-1B-shaped checkpoint in "
              f"{time.perf_counter() - start:.0f} s")
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    child = subprocess.run([sys.executable, "-c", CHILD, str(hf_dir), str(out)],
                           check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    memory = json.loads(child.stdout.strip().splitlines()[-1])
    abstract = abstract_train_params(checkpoint.load_run_config(out))
    sizes = [leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(abstract)]
    gb = 1e9
    rows = [
        ("model, fp32", sum(sizes) / gb),
        ("largest Hugging Face tensor, bf16", largest_hf_tensor_bytes(hf_dir) / gb),
        ("largest stacked parameter, fp32", max(sizes) / gb),
        ("RSS before the import", memory["rss_before"] / gb),
        ("peak RSS during the import", memory["peak"] / gb),
        ("peak minus RSS before", (memory["peak"] - memory["rss_before"]) / gb),
    ]
    print(f"| import of {hf_dir} ({seconds:.0f} s) | GB |\n|---|---|")
    for label, value in rows:
        print(f"| {label} | {value:.2f} |")
    shutil.rmtree(out, ignore_errors=True)
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)
    elif not args.keep:
        shutil.rmtree(hf_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
