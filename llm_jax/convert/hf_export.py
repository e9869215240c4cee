"""`llm-jax export-hf`: one of our checkpoints -> a directory `LlamaForCausalLM` loads."""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from pathlib import Path
from typing import Sequence

import jax
import numpy as np
from safetensors.numpy import save_file

from llm_jax import checkpoint, storage
from llm_jax.config import LoraConfig
from llm_jax.convert.hf_config import hf_config_from_model
from llm_jax.convert.hf_import import INDEX_FILE, SINGLE_FILE
from llm_jax.convert.hf_weights import expected_hf_shapes, hf_tensors
from llm_jax.convert.peft_export import write_peft_adapter
from llm_jax.data.tokenizer import HF_TOKENIZER_FILES, SENTENCEPIECE_FILE
from llm_jax.data.tokenizer_training import export_hf
from llm_jax.infer.host_arrays import is_main_process
from llm_jax.errors import UserError
from llm_jax.infer.loading import restore_sharded
from llm_jax.model.lora import merge_adapters

MAX_SHARD_BYTES = 5 * 1024**3


def _shards(sizes: dict[str, int], max_bytes: int) -> list[list[str]]:
    """Tensor names per safetensors file, in order, each file at most `max_bytes` (or one
    tensor)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, nbytes in sizes.items():
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def write_hf_checkpoint(model_config, params, out: str | Path,
                        max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    """config.json plus safetensors (sharded with an index when over `max_shard_bytes`).

    Tensors are gathered to host memory one at a time (one file's worth at most is held), by
    every process, as gathering is collective; only process 0 writes.
    """
    out = Path(out)
    hf_config = hf_config_from_model(model_config)
    tensors = hf_tensors(params, model_config)
    itemsize = np.dtype(jax.tree.leaves(params)[0].dtype).itemsize
    sizes = {name: math.prod(shape) * itemsize
             for name, shape in expected_hf_shapes(model_config).items()}
    sizes = {name: sizes[name] for name in tensors}
    writer = is_main_process()
    if writer:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(hf_config, indent=2))
    shards = _shards(sizes, max_shard_bytes)
    files = ([SINGLE_FILE] if len(shards) == 1 else
             [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)])
    for file, names in zip(files, shards):
        arrays = {name: tensors[name]() for name in names}
        if writer:
            save_file(arrays, out / file, metadata={"format": "pt"})
        del arrays
    if writer and len(shards) > 1:
        weight_map = {name: file for file, names in zip(files, shards) for name in names}
        index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
        (out / INDEX_FILE).write_text(json.dumps(index, indent=2))
    return out


def export_hf_checkpoint(checkpoint_dir: storage.PathLike, out: storage.PathLike,
                         mesh_overrides: Sequence[str] = (), lora: str = "") -> storage.AnyPath:
    """The parameters are restored in their shards over the `mesh.*` settings' mesh (default:
    fsdp over all devices), so a model larger than one device or host exports too. A `gs://`
    `out` is written on local disk first (safetensors writes local files), then uploaded.
    A LoRA run exports with `lora="merge"` (one model, adapters folded in) or `"peft"`."""
    target = storage.path(out)
    if not storage.is_remote(target):
        return _export(checkpoint_dir, target, mesh_overrides, lora)
    with tempfile.TemporaryDirectory() as tmp:
        _export(checkpoint_dir, Path(tmp), mesh_overrides, lora)
        if is_main_process():
            storage.publish(tmp, target)
    return target


def _export(checkpoint_dir: storage.PathLike, out: Path, mesh_overrides: Sequence[str],
            lora: str) -> Path:
    config, params, _ = restore_sharded(checkpoint_dir, mesh_overrides)
    model = config.model
    if model.lora.rank and not lora:
        raise UserError(f"{checkpoint_dir} trained LoRA adapters (model.lora.rank="
                        f"{model.lora.rank}); export them with --merge-lora (one model, the "
                        "adapters folded in) or --peft (a PEFT adapter for the base model)")
    if lora and not model.lora.rank:
        raise UserError(f"{checkpoint_dir} has no LoRA adapters (model.lora.rank=0); export it "
                        "without --merge-lora / --peft")
    if lora == "peft":
        write_peft_adapter(model, params, out)
    else:
        if lora == "merge":
            params = merge_adapters(model, params)
            model = dataclasses.replace(model, lora=LoraConfig())
        out = write_hf_checkpoint(model, params, out)
    tokenizer_dir = checkpoint.tokenizer_dir(checkpoint_dir)  # every process: Orbax syncs them
    if not is_main_process():
        return out
    files = [tokenizer_dir / name for name in HF_TOKENIZER_FILES if (tokenizer_dir / name).is_file()]
    with tempfile.TemporaryDirectory() as tmp:
        if files == [tokenizer_dir / SENTENCEPIECE_FILE]:  # ours: as transformers' LlamaTokenizer
            files = list(export_hf(files[0], Path(tmp) / "hf").iterdir())
        for file in files:
            (out / file.name).write_bytes(file.read_bytes())
    return out
