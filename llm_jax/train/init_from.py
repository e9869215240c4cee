"""Where fine-tuning starts: `train.init_from`'s parameters, and the frozen reference.

DPO (with `dpo.reference=model`) and PPO compare the policy with its starting point, so the
train state carries a second parameter tree, `reference`: a copy of the initial parameters,
sharded like them, never updated, and saved with every checkpoint so that a resumed run has
exactly the reference it started with. Under LoRA the frozen base is that starting point, so
no copy is kept.

A checkpoint may hold a different head than the run trains (a reward model's score head, or
none where PPO needs a value head): the parameters both have are loaded, a head the run needs
and the checkpoint lacks starts freshly initialized, and one the run does not need is dropped.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax.traverse_util import flatten_dict, unflatten_dict

from llm_jax import checkpoint
from llm_jax.config import Config, LoraConfig, ModelConfig
from llm_jax.errors import UserError
from llm_jax.model.heads import init_train_params
from llm_jax.model.lora import MATRICES, along_outputs, is_adapter, merge_adapters, without_adapters
from llm_jax.model.quantize import quantize
from llm_jax.parallel.rules import axis_rules
from llm_jax.parallel.sharding import logical_to_shardings


def needs_reference(config: Config) -> bool:
    """The objective compares with the initial policy in every step (not precomputed)."""
    objective = config.train.objective
    return (objective == "dpo" and config.dpo.reference == "model") or objective == "ppo"


def copies_reference(config: Config) -> bool:
    """Under LoRA the reference is the frozen base itself (`reference_params`): no copy."""
    return needs_reference(config) and not config.model.lora.rank


def reference_params(config: Config, state: Any) -> Any:
    """The reference an objective compares with (None if it needs none): the state's copy,
    or under LoRA the state's own parameters with every adapter switched off."""
    if not needs_reference(config):
        return None
    return state.reference if state.reference is not None else without_adapters(state.params)


def _copy(params: Any, shardings: Any) -> Any:
    """New buffers with the same values and shardings: the step donates the policy's."""
    return jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=shardings)(params)


def attach_reference(config: Config, state: Any, shardings: Any) -> tuple[Any, Any]:
    """(state, shardings) with `reference` set to a copy of the parameters when the objective
    needs one."""
    if not copies_reference(config):
        return state, shardings
    return (state.replace(reference=_copy(state.params, shardings.params)),
            shardings.replace(reference=shardings.params))


def initialize_from(config: Config, state: Any, shardings: Any) -> Any:
    """The state with `train.init_from`'s parameters (and a reference copied from them).
    A checkpoint's own adapters are merged into its matrices first; under LoRA the run's
    adapters start fresh, and its quantized matrices are quantized from the checkpoint's."""
    run_dir, _ = checkpoint.resolve(config.train.init_from)
    source = checkpoint.load_run_config(run_dir)
    if _without_lora(source.model) != _without_lora(config.model):
        raise UserError(f"train.init_from={config.train.init_from} holds a different model; "
                        "its model section must equal this run's (model.lora aside)")
    mesh = jax.tree.leaves(shardings.params)[0].mesh
    boxed = jax.eval_shape(lambda: init_train_params(source, jax.random.key(0)))
    source_shardings = logical_to_shardings(boxed, mesh, axis_rules(config.mesh.rules))
    _, restored = checkpoint.restore_params(config.train.init_from, source_shardings)
    if source.model.lora.rank:
        restored = merge_adapters(source.model, restored)
    params, fresh = _filled(config, state.params, restored, shardings.params)
    if fresh and jax.process_index() == 0:
        print(f"train.init_from: {', '.join(fresh)} not in the checkpoint; freshly initialized")
    state = state.replace(params=params)
    if state.reference is not None:
        state = state.replace(reference=_copy(params, shardings.reference))
    return state


def _without_lora(model: ModelConfig) -> ModelConfig:
    return dataclasses.replace(model, lora=LoraConfig())


def _filled(config: Config, params: dict, restored: dict, shardings: dict
            ) -> tuple[dict, list[str]]:
    """(`params` with every leaf the checkpoint has, quantized where the run stores codes;
    the top-level parts it lacks, adapters aside)."""
    flat, source = flatten_dict(params), flatten_dict(restored)
    flat_shardings = flatten_dict(shardings)
    out, fresh = {}, set()
    for path, value in flat.items():
        base = path[:-1]
        if path in source:  # in the run's dtype (model.lora.quantize=bfloat16)
            out[path] = source[path].astype(value.dtype)
        elif path[-1] in ("codes", "scale") and base in source:
            if path[-1] == "codes":
                _, in_dims, out_dims = MATRICES[base[-1]]
                parts = {part: flat_shardings[(*base, part)] for part in ("codes", "scale")}
                quantized = jax.jit(
                    lambda w: quantize(w, config.model.lora.quantize, in_dims, out_dims,
                                       along_outputs(base[-1])),
                    out_shardings=parts)(source[base])
                out.update({(*base, part): quantized[part] for part in parts})
        else:
            out[path] = value
            if not any(is_adapter(name) for name in path):
                fresh.add(path[0])
    return unflatten_dict(out), sorted(fresh)
