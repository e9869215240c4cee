"""`llm-jax import-hf`: a Hugging Face Llama directory -> one of our checkpoint directories.

The import streams: every tensor's presence and shape is checked from the safetensors headers
before anything is written, then each of our parameters is built (a stacked [layers, ...] one
layer by layer, a vocabulary-sized one in blocks of rows) and written before the next, so host
memory holds about one parameter, not the model.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
from safetensors import safe_open

from llm_jax import checkpoint, storage
from llm_jax.config import Config, DataConfig, ModelConfig
from llm_jax.convert.hf_config import model_config_from_hf
from llm_jax.convert.hf_weights import (TensorGetter, check_shape, expected_hf_shapes,
                                        param_sources, params_from_hf)
from llm_jax.data.tokenizer import HF_TOKENIZER_FILES
from llm_jax.errors import UserError
from llm_jax.parallel.one_process import on_process_zero

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


def _checked_checkpoint(hf_dir: Path) -> tuple[ModelConfig, dict[str, Path]]:
    """(our model config, the file of each tensor), every tensor's presence and shape checked
    from the file headers, without reading any tensor's data."""
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
    for file in sorted({files[name] for name in expected}):
        if not file.exists():
            name = min(name for name in expected if files[name] == file)
            raise UserError(f"tensor {name} should be in {file}, which is missing")
        with safe_open(file, framework="numpy") as f:
            held = set(f.keys())
            for name in sorted(name for name in expected if files[name] == file):
                if name not in held:
                    raise UserError(f"tensor {name} should be in {file}, which lacks it")
                check_shape(name, tuple(f.get_slice(name).get_shape()), expected[name])
    return model_config, {name: files[name] for name in expected}


def _reader(files: dict[str, Path]) -> TensorGetter:
    """Reads rows of one tensor as float32. Each read opens its file anew: safetensors maps
    the file, and a mapping kept open would keep every page read so far resident."""

    def get(name: str, rows: slice) -> np.ndarray:
        with safe_open(files[name], framework="numpy") as f:
            if f.get_slice(name).get_dtype() != "BF16":
                return np.asarray(f.get_slice(name)[rows], dtype=np.float32)
        # The flax backend reads bfloat16, which plain numpy cannot (it costs a copy more).
        with safe_open(files[name], framework="flax") as f:
            return np.asarray(f.get_slice(name)[rows], dtype=np.float32)

    return get


def read_hf_checkpoint(hf_dir: str | Path) -> tuple[ModelConfig, dict]:
    """(our model config, our params) from a Hugging Face Llama directory, every tensor checked."""
    model_config, files = _checked_checkpoint(Path(hf_dir))
    return model_config, params_from_hf(_reader(files), model_config)


def _refuse_used_out(out: storage.AnyPath) -> None:
    if (out / checkpoint.STEPS_DIR).exists():
        raise UserError(f"{out} already holds checkpoints; choose an empty --out")


def import_hf_checkpoint(hf_dir: storage.PathLike, out: storage.PathLike) -> storage.AnyPath:
    """Streams a Hugging Face Llama into a new checkpoint directory (either may be `gs://`;
    a `gs://` Hugging Face directory is read from its local copy). On several processes every
    process takes part in the save, and process 0 alone reads tensors and writes files."""
    hf_dir, out = storage.local_copy(hf_dir), storage.path(out)
    model_config, files = _checked_checkpoint(hf_dir)
    on_process_zero(lambda: _refuse_used_out(out))  # before any process writes there
    seq_len = min(DataConfig().seq_len, model_config.max_seq_len)
    config = Config(run_dir=str(out), model=model_config, data=DataConfig(seq_len=seq_len))
    checkpoint.save_params_one_at_a_time(out, config,
                                         param_sources(_reader(files), model_config))
    copied = [name for name in HF_TOKENIZER_FILES if (hf_dir / name).exists()]
    if copied and jax.process_index() == 0:
        (out / checkpoint.TOKENIZER_DIR).mkdir(parents=True, exist_ok=True)
        for name in copied:
            (out / checkpoint.TOKENIZER_DIR / name).write_bytes((hf_dir / name).read_bytes())
    return out
