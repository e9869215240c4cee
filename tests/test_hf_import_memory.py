"""`import-hf` streams: its peak host memory is a small multiple of one stacked parameter.

The import runs in a child process, which resets its peak resident set (VmHWM) after jax,
orbax and our modules are loaded and reports how far the import raised it.
"""

import json
import subprocess
import sys

import jax
import torch
import transformers

from llm_jax import checkpoint
from llm_jax.model.heads import abstract_train_params

SHAPE = dict(vocab_size=32000, hidden_size=1024, intermediate_size=4096, num_hidden_layers=8,
             num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=256,
             tie_word_embeddings=False)

CHILD = """
import json, sys
import jax
from llm_jax.convert.hf_import import import_hf_checkpoint

def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status")
                if l.startswith(key + ":"))

jax.devices()
open("/proc/self/clear_refs", "w").write("5")  # VmHWM := current RSS
before = status("VmRSS")
import_hf_checkpoint(sys.argv[1], sys.argv[2])
print(json.dumps({"increase": status("VmHWM") - before}))
"""


def save_random_llama(path):
    """An fp32 Llama of 750 MB, filled with random values without a slow initialization."""
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SHAPE))
    model.to_empty(device="cpu")
    model.tie_weights()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    model.save_pretrained(path)


def test_import_peak_memory_is_a_few_parameters_not_the_model(tmp_path):
    save_random_llama(tmp_path / "hf")
    child = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "hf"),
                            str(tmp_path / "ours")], capture_output=True, text=True, check=True)
    increase = json.loads(child.stdout.strip().splitlines()[-1])["increase"]
    sizes = [leaf.size * leaf.dtype.itemsize
             for leaf in jax.tree.leaves(abstract_train_params(
                 checkpoint.load_run_config(tmp_path / "ours")))]
    largest, model = max(sizes), sum(sizes)
    print(f"peak increase {increase / 1e6:.0f} MB; largest parameter {largest / 1e6:.0f} MB, "
          f"model {model / 1e6:.0f} MB (fp32)")
    assert increase < 3 * largest and increase < model / 2, (increase, largest, model)
