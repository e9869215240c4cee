"""`llm-jax import-hf`: a Hugging Face Llama directory -> one of our checkpoint directories."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from safetensors import safe_open

from llm_jax import checkpoint
from llm_jax.config import Config, DataConfig, ModelConfig
from llm_jax.convert.hf_config import model_config_from_hf
from llm_jax.convert.hf_weights import expected_hf_shapes, params_from_hf
from llm_jax.data.tokenizer import HF_TOKENIZER_FILES
from llm_jax.errors import UserError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def _tensor_files(hf_dir: Path) -> dict[str, Path]:
    """Which safetensors file holds each tensor, for single-file or sharded checkpoints."""
    index = hf_dir / INDEX_FILE
    if index.exists():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        return {name: hf_dir / file for name, file in weight_map.items()}
    single = hf_dir / SINGLE_FILE
    if not single.exists():
        raise UserError(f"{hf_dir} has neither {SINGLE_FILE} nor {INDEX_FILE}")
    with safe_open(single, framework="numpy") as f:
        return {name: single for name in f.keys()}


def read_hf_checkpoint(hf_dir: str | Path) -> tuple[ModelConfig, dict]:
    """(our model config, our params) from a Hugging Face Llama directory, every tensor checked."""
    hf_dir = Path(hf_dir)
    config_path = hf_dir / "config.json"
    if not config_path.exists():
        raise UserError(f"{hf_dir} has no config.json")
    model_config = model_config_from_hf(json.loads(config_path.read_text()))
    files = _tensor_files(hf_dir)
    expected = expected_hf_shapes(model_config)
    missing = sorted(set(expected) - set(files))
    if missing:
        raise UserError(f"checkpoint lacks tensor {missing[0]}"
                        + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    unexpected = sorted(name for name in set(files) - set(expected)
                        if not name.endswith("rotary_emb.inv_freq"))
    if unexpected:
        raise UserError(f"checkpoint holds tensor {unexpected[0]}, which config.json's Llama "
                        "does not have")
    handles = {}

    def get(name: str) -> np.ndarray:
        file = files[name]
        if not file.exists():
            raise UserError(f"tensor {name} should be in {file}, which is missing")
        if file not in handles:
            # The flax backend reads bfloat16, which plain numpy cannot.
            handles[file] = safe_open(file, framework="flax")
        return np.asarray(handles[file].get_tensor(name), dtype=np.float32)

    return model_config, params_from_hf(get, model_config)


def import_hf_checkpoint(hf_dir: str | Path, out: str | Path) -> Path:
    model_config, params = read_hf_checkpoint(hf_dir)
    out = Path(out)
    if (out / checkpoint.STEPS_DIR).exists():
        raise UserError(f"{out} already holds checkpoints; choose an empty --out")
    seq_len = min(DataConfig().seq_len, model_config.max_seq_len)
    config = Config(run_dir=str(out), model=model_config, data=DataConfig(seq_len=seq_len))
    checkpoint.save_params(out, config, params)
    copied = [name for name in HF_TOKENIZER_FILES if (Path(hf_dir) / name).exists()]
    if copied:
        (out / checkpoint.TOKENIZER_DIR).mkdir(parents=True, exist_ok=True)
        for name in copied:
            shutil.copy2(Path(hf_dir) / name, out / checkpoint.TOKENIZER_DIR / name)
    return out
