"""`llm-jax export-hf`: one of our checkpoints -> a directory `LlamaForCausalLM` loads."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import jax
import numpy as np
from safetensors.numpy import save_file

from llm_jax import checkpoint
from llm_jax.convert.hf_config import hf_config_from_model
from llm_jax.convert.hf_import import INDEX_FILE, SINGLE_FILE
from llm_jax.convert.hf_weights import hf_from_params
from llm_jax.data.tokenizer import HF_TOKENIZER_FILES, SENTENCEPIECE_FILE
from llm_jax.data.tokenizer_training import export_hf

MAX_SHARD_BYTES = 5 * 1024**3


def _shards(tensors: dict[str, np.ndarray], max_bytes: int) -> list[dict[str, np.ndarray]]:
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, array in tensors.items():
        if shards[-1] and size + array.nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = array
        size += array.nbytes
    return shards


def write_hf_checkpoint(model_config, params, out: str | Path,
                        max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    """config.json plus safetensors (sharded with an index when over `max_shard_bytes`)."""
    out = Path(out)
    hf_config = hf_config_from_model(model_config)
    tensors = hf_from_params(jax.device_get(params), model_config)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(hf_config, indent=2))
    shards = _shards(tensors, max_shard_bytes)
    if len(shards) == 1:
        save_file(shards[0], out / SINGLE_FILE, metadata={"format": "pt"})
        return out
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, out / name, metadata={"format": "pt"})
        weight_map.update({tensor: name for tensor in shard})
    total = sum(a.nbytes for a in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2))
    return out


def export_hf_checkpoint(checkpoint_dir: str | Path, out: str | Path) -> Path:
    config, params = checkpoint.restore_params(checkpoint_dir)
    out = write_hf_checkpoint(config.model, params, out)
    tokenizer_dir = checkpoint.tokenizer_dir(checkpoint_dir)
    files = [tokenizer_dir / name for name in HF_TOKENIZER_FILES if (tokenizer_dir / name).is_file()]
    with tempfile.TemporaryDirectory() as tmp:
        if files == [tokenizer_dir / SENTENCEPIECE_FILE]:  # ours: as transformers' LlamaTokenizer
            files = list(export_hf(files[0], Path(tmp) / "hf").iterdir())
        for file in files:
            shutil.copy2(file, out / file.name)
    return out
