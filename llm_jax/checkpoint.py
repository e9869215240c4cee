"""Checkpoint directories on Orbax.

A checkpoint directory (also: a run directory) holds

    config.yaml            the resolved `Config` of the run
    checkpoints/<step>/    Orbax steps, each with item `params` (training adds its own items)
    tokenizer/             the tokenizer's own files, when the run has one

Orbax writes each step to a temporary name and renames it when complete, so a step directory
that exists is whole. Wherever a command takes `--checkpoint`, it may name the run directory
(its latest step is used) or one step directory inside it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import sys
from typing import Any, Callable, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

from llm_jax.config import Config, from_dict, load_yaml, save_config
from llm_jax.data.shards import merge_states
from llm_jax.data.tokenizer import Tokenizer, load_tokenizer
from llm_jax.errors import UserError
from llm_jax.storage import AnyPath, PathLike, path as storage_path
from llm_jax.model.heads import abstract_train_params

_LIBC = ctypes.CDLL(None) if sys.platform == "linux" else None  # the process's own C library

CONFIG_FILE = "config.yaml"
STEPS_DIR = "checkpoints"
TOKENIZER_DIR = "tokenizer"


def checkpoint_manager(run_dir: PathLike, keep: int | None = None,
                       async_save: bool = False) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save
    )
    return ocp.CheckpointManager(storage_path(run_dir) / STEPS_DIR, options=options)


def resolve(path: PathLike) -> tuple[AnyPath, int]:
    """(run directory, step) for a run directory or one of its step directories."""
    path = storage_path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    if path.parent.name == STEPS_DIR and path.name.isdigit():
        return path.parent.parent, int(path.name)
    if not (path / CONFIG_FILE).exists():
        raise UserError(f"{path} is not a checkpoint directory: it has no {CONFIG_FILE}")
    step = checkpoint_manager(path).latest_step()
    if step is None:
        raise UserError(f"{path} holds no finished checkpoint step under {STEPS_DIR}/")
    return path, step


def load_run_config(run_dir: PathLike) -> Config:
    path = storage_path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise UserError(f"{path} is missing")
    return from_dict(load_yaml(path))


# What decides the shapes of a saved train state: a run resumed with other values cannot load it.
STATE_SHAPING_KEYS = ("model", "train.objective", "dpo.reference", "ppo.algorithm")


def _flat(value: Any, prefix: str) -> dict[str, Any]:
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}.{key}").items()}
    return {prefix: value}


def _lookup(config: Config, key: str) -> Any:
    for part in key.split("."):
        config = getattr(config, part)
    return config


def check_resumable(run_dir: PathLike, config: Config) -> None:
    """Fails, naming the keys, when `config` cannot resume the checkpoints in `run_dir`."""
    saved = load_run_config(run_dir)
    differing = []
    for key in STATE_SHAPING_KEYS:
        old, new = _flat(_lookup(saved, key), key), _flat(_lookup(config, key), key)
        differing += [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                      if old.get(k) != new.get(k)]
    if differing:
        raise UserError(f"{run_dir} holds checkpoints of another model or objective, so this run "
                        f"cannot resume them ({'; '.join(differing)}): use a new run_dir, or the "
                        "settings it was started with")


def save_params(run_dir: PathLike, config: Config, params: Any, step: int = 0) -> AnyPath:
    """Writes config.yaml and one Orbax step holding only `params` (imports, exports)."""
    run_dir = storage_path(run_dir)
    save_config(config, run_dir / CONFIG_FILE)
    manager = checkpoint_manager(run_dir)
    manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)))
    manager.wait_until_finished()
    manager.close()
    return run_dir


@dataclasses.dataclass(frozen=True)
class HostArraySource:
    """A host array that is made only when its turn to be written comes, so that a save of
    many of them (an imported model) holds one at a time instead of the whole pytree."""

    shape: tuple[int, ...]
    dtype: np.dtype
    build: Callable[[], np.ndarray]


def _return_freed_memory() -> None:
    """Hands the heap's free pages back to the system (glibc only): glibc keeps the blocks that
    tensorstore's writer threads freed, and without this an import's peak resident set was
    1.6 to 2.4 times higher (tests/test_hf_import_memory.py's model)."""
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


class _OneAtATimeHandler(ocp.type_handlers.NumpyHandler):
    """Writes each `HostArraySource` as the np.ndarray it builds (the same files and metadata
    as a saved np.ndarray), building, writing and dropping one before the next; process 0
    alone builds and writes, as Orbax's numpy handler has process 0 alone write."""

    def __init__(self):
        super().__init__(deepcopy_host_arrays=False)

    async def _write_in_turn(self, values: Sequence[HostArraySource], infos: Sequence[Any],
                             args: Sequence[Any]) -> None:
        for value, info, arg in zip(values, infos, args):
            array = value.build() if jax.process_index() == 0 else value
            await self._background_serialize([array], [info], [arg])
            del array
            _return_freed_memory()

    async def serialize(self, values: Sequence[HostArraySource], infos: Sequence[Any],
                        args: Sequence[Any] | None = None) -> list[Any]:
        args = args or [ocp.SaveArgs()] * len(values)
        return [ocp.future.CommitFutureAwaitingContractedSignals(
            self._write_in_turn(values, infos, args), name="one_at_a_time")]


def save_params_one_at_a_time(run_dir: PathLike, config: Config, sources: Any,
                              step: int = 0) -> AnyPath:
    """`save_params` for a pytree of `HostArraySource`s, restored by `restore_params` alike;
    host memory holds one built parameter at a time. A collective on several processes."""
    run_dir = storage_path(run_dir)
    if jax.process_index() == 0:
        save_config(config, run_dir / CONFIG_FILE)
    registry = ocp.type_handlers.create_type_handler_registry(
        (HostArraySource, _OneAtATimeHandler()),
        (jax.Array, ocp.type_handlers.ArrayHandler()))  # unused; Orbax warns when it lacks one
    manager = ocp.CheckpointManager(
        run_dir / STEPS_DIR, options=ocp.CheckpointManagerOptions(create=True),
        item_handlers={"params": ocp.PyTreeCheckpointHandler(type_handler_registry=registry)})
    manager.save(step, args=ocp.args.Composite(params=ocp.args.PyTreeSave(sources)))
    manager.wait_until_finished()
    manager.close()
    return run_dir


def restore_params(checkpoint: PathLike, shardings: Any = None) -> tuple[Config, Any]:
    """(config, params) from a checkpoint; `shardings` places each parameter's shards (by
    default whole on the first device, whatever mesh the checkpoint was written from)."""
    run_dir, step = resolve(checkpoint)
    config = load_run_config(run_dir)
    abstract = abstract_train_params(config)  # the model, and the head its objective trains
    if shardings is None:
        shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]),
                                 abstract)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    manager = checkpoint_manager(run_dir)
    restored = manager.restore(
        step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract))
    )
    manager.close()
    return config, restored["params"]


def tokenizer_dir(checkpoint: PathLike) -> AnyPath:
    run_dir, _ = resolve(checkpoint)
    return run_dir / TOKENIZER_DIR


def load_run_tokenizer(checkpoint: PathLike) -> Tokenizer:
    """The tokenizer saved with a checkpoint (run directory or step directory)."""
    directory = tokenizer_dir(checkpoint)
    if not directory.is_dir() or not any(directory.iterdir()):
        raise UserError(
            f"checkpoint {checkpoint} has no tokenizer: expected {directory}/tokenizer.model "
            "(a trained tokenizer) or Hugging Face tokenizer files (llm-jax import-hf copies them)")
    return load_tokenizer(directory)


def save_run_tokenizer(tokenizer: Tokenizer, run_dir: PathLike) -> None:
    """Keeps a run directory self-contained (generate, eval and export read its tokenizer
    there): the tokenizer's own files only, never the other files beside them."""
    tokenizer.save(storage_path(run_dir) / TOKENIZER_DIR)


def all_data_states(data_state: Any) -> Any:
    """Every process's data state as one (all data shards), so that the primary process, which
    alone writes JSON items, saves them all; a collective, like the save itself."""
    if jax.process_count() == 1:
        return data_state
    from jax.experimental import multihost_utils

    encoded = np.frombuffer(json.dumps(data_state).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.asarray([len(encoded)], np.int64))
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[:len(encoded)] = encoded
    gathered = multihost_utils.process_allgather(padded)
    return merge_states([json.loads(row[:int(n)].tobytes())
                         for row, n in zip(gathered, lengths.reshape(-1))])


def save_train_state(manager: ocp.CheckpointManager, state: Any, data_state: Any,
                     seed: int) -> None:
    """One step with everything a resumed run needs; asynchronous when the manager is."""
    step = int(jax.device_get(state.step))
    items = dict(
        params=ocp.args.StandardSave(state.params),
        opt_state=ocp.args.StandardSave(state.opt_state),
        meta=ocp.args.JsonSave({"step": step, "bad_steps": int(jax.device_get(state.bad_steps)),
                                "seed": seed}),
        data=ocp.args.JsonSave(all_data_states(data_state)),
    )
    if state.reference is not None:  # DPO / PPO: the frozen initial policy
        items["reference"] = ocp.args.StandardSave(state.reference)
    manager.save(step, args=ocp.args.Composite(**items))


def restore_train_state(manager: ocp.CheckpointManager, step: int, abstract_state: Any,
                        shardings: Any) -> tuple[Any, Any]:
    """(state placed on `shardings`, data iterator state of every data shard); shardings may
    differ from the saved run's, in which case Orbax reshards onto the new mesh, and each
    process takes its own shards' states from the data state."""
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)
    items = dict(
        params=ocp.args.StandardRestore(target.params),
        opt_state=ocp.args.StandardRestore(target.opt_state),
        meta=ocp.args.JsonRestore(),
        data=ocp.args.JsonRestore(),
    )
    if abstract_state.reference is not None:
        items["reference"] = ocp.args.StandardRestore(target.reference)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    meta = restored["meta"]
    state = abstract_state.replace(
        step=jax.device_put(jax.numpy.asarray(meta["step"], jax.numpy.int32), shardings.step),
        params=restored["params"],
        opt_state=restored["opt_state"],
        bad_steps=jax.device_put(jax.numpy.asarray(meta["bad_steps"], jax.numpy.int32),
                                 shardings.bad_steps),
    )
    if abstract_state.reference is not None:
        state = state.replace(reference=restored["reference"])
    return state, restored["data"]
