"""`llm-jax plan`: will this config fit that slice? Answered without allocating anything.

Parameter and optimizer bytes per device come from `jax.eval_shape` of the real train state
and the real sharding rules; activation bytes from the formulas of Korthikanti et al. 2022
("Reducing Activation Recomputation in Large Transformer Models"), adapted to GQA and SwiGLU.
The step is also compiled ahead of time, and XLA's own memory and cost analyses are printed
and decide the verdict: on this process's devices when they are the slice, or, for a TPU
slice on any machine, on libtpu's compile-only devices of that topology (`parallel/
tpu_topology.py`; the `tpu` extra). Without either, the formula estimate decides.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec

from llm_jax.chips import Chip, parse_slice
from llm_jax.config import Config, ConfigError, ModelConfig
from llm_jax.errors import UserError
from llm_jax.hlo_costs import StepCosts, step_costs
from llm_jax.model.lora import unquantized
from llm_jax.model.params import count_params
from llm_jax.parallel.mesh import check_fits_mesh, mesh_shape
from llm_jax.parallel.rules import axis_rules
from llm_jax.parallel.sharding import sharding_context
from llm_jax.roofline import roofline, roofline_lines
from llm_jax.train.flops import flops_per_token, matmul_params
from llm_jax.train.optimizer import make_optimizer
from llm_jax.train.state import abstract_train_state
from llm_jax.train.trainable import trained_params


# XLA needs headroom beyond what this plan counts (fragmentation, collectives' buffers).
USABLE_FRACTION = 0.9


def _shard_factor(spec: PartitionSpec, rules: dict[str, Any], sizes: dict[str, int]) -> int:
    factor = 1
    for name in spec:
        target = rules.get(name) if name else None
        for axis in (target,) if isinstance(target, str) else (target or ()):
            factor *= sizes[axis]
    return factor


@dataclasses.dataclass(frozen=True)
class StateBytes:
    """The train state on one device."""

    params: float
    trained: float  # the parameters that get gradients: all, or LoRA's adapters and head
    optimizer: float
    count: int  # parameters of the model (a quantized matrix counts its weights)
    trained_count: int


def state_bytes_per_device(config: Config, sizes: dict[str, int]) -> StateBytes:
    tx = make_optimizer(config.optimizer, config.train.steps)
    abstract, specs = abstract_train_state(config, tx)
    rules = dict(axis_rules(config.mesh.rules))
    is_spec = lambda x: isinstance(x, PartitionSpec)  # noqa: E731

    def per_device(tree, spec_tree) -> float:
        leaves = jax.tree.leaves(tree)
        spec_leaves = jax.tree.leaves(spec_tree, is_leaf=is_spec)
        return sum(leaf.size * leaf.dtype.itemsize / _shard_factor(spec, rules, sizes)
                   for leaf, spec in zip(leaves, spec_leaves))

    trained = trained_params(config, abstract.params)
    return StateBytes(params=per_device(abstract.params, specs.params),
                      trained=per_device(trained, trained_params(config, specs.params)),
                      optimizer=per_device(abstract.opt_state, specs.opt_state),
                      count=count_params(unquantized(config.model)),
                      trained_count=sum(leaf.size for leaf in jax.tree.leaves(trained)))


def _compute_width(model: ModelConfig) -> int:
    """Bytes per element of activations and of gathered weights: the model's compute dtype."""
    return 2 if model.dtype == "bfloat16" else 4


def activation_bytes_per_device(config: Config, sizes: dict[str, int]) -> float:
    """Saved activations for the backward pass, per device, for one microbatch in flight
    (times the stages' microbatches in flight under a pipeline), plus one block's working set
    while its backward runs and the fp32 logits (one `train.loss_chunk` at a time)."""
    m, t = config.model, config.data.seq_len
    rows = config.train.batch_size / (sizes["data"] * sizes["fsdp"] * sizes["expert"]
                                      * config.train.microbatches)
    tp = sizes["tensor"]
    width = _compute_width(m)
    d, heads, hd = m.d_model, m.num_heads, m.resolved_head_dim
    kv = m.num_kv_heads * hd
    tokens = rows * t / sizes["context"]  # context parallelism splits every sequence
    matmul_outputs = tokens * (heads * hd + 2 * kv + d + (3 if m.mlp == "swiglu" else 2)
                               * m.mlp_dim) * width / tp
    flash = m.attention in ("splash", "cudnn")  # kernels that never hold the whole scores
    attention_scores = 0.0 if flash else tokens * heads * t * 4 / tp  # fp32 probabilities
    norms_and_inputs = 4 * tokens * d * width
    # One block's whole working set, live while its backward pass runs (recomputed under remat).
    working_set = matmul_outputs + norms_and_inputs + attention_scores
    if m.remat == "full":
        per_layer = tokens * d * width  # only each block's input is kept
    elif m.remat not in ("none", "dots", "dots_no_batch"):
        # The block's input and the activations the named policy keeps on the device.
        widths = {"query_proj": heads * hd / tp, "key_proj": kv / tp, "value_proj": kv / tp,
                  "attention_out": heads * hd / tp, "out_proj": d, "mlp_hidden": m.mlp_dim / tp,
                  "mlp_out": d}
        per_layer = tokens * (d + sum(widths[name] for name in m.remat_names())) * width
    else:
        per_layer = matmul_outputs + norms_and_inputs
        if m.remat in ("none", "dots"):
            per_layer += attention_scores
        if m.remat == "none":
            per_layer += tokens * m.mlp_dim * width / tp  # activation function inputs
    layers_here = m.num_layers / sizes["pipe"]
    in_flight = min(config.train.microbatches, sizes["pipe"]) if sizes["pipe"] > 1 else 1
    # Logits and their gradient in fp32; with train.loss_chunk one chunk of positions at a time.
    logit_positions = min(config.train.loss_chunk or t, t)
    logits = rows * logit_positions * m.vocab_size * 4 / tp * 2 / sizes["context"]
    return per_layer * layers_here * in_flight + working_set + logits


def _with_xla_attention(config: Config) -> Config:
    """Shapes do not depend on the attention kernel, which may not exist on this machine."""
    return dataclasses.replace(config, model=dataclasses.replace(config.model, attention="xla"))


@dataclasses.dataclass(frozen=True)
class Compiled:
    """XLA's figures for the compiled step, per device."""

    where: str  # what it was compiled for
    platform: str
    arguments: float
    outputs: float
    temporaries: float
    aliased: float
    flops: float | None
    bytes_accessed: float | None
    costs: StepCosts  # every loop iteration counted (`hlo_costs`)

    @property
    def total(self) -> float:
        return self.arguments + self.outputs + self.temporaries - self.aliased


def plan(config: Config, slice_name: str = "", compile_step: bool = True,
         num_slices: int = 1) -> str:
    """A human-readable report; see the module docstring."""
    chip, chips = parse_slice(slice_name) if slice_name else (None, jax.device_count())
    if num_slices > 1 and (chip is None or chip.platform != "tpu"):
        raise ConfigError("--num-slices needs a TPU --slice (multislice)")
    chips *= num_slices
    sizes = mesh_shape(config.mesh, chips)
    check_fits_mesh(config, sizes)
    shapes = _with_xla_attention(config)
    state = state_bytes_per_device(shapes, sizes)
    params, opt, count = state.params, state.optimizer, state.count
    acts = activation_bytes_per_device(config, sizes)
    # The step's own buffers: fp32 gradients (and their accumulator over microbatches) and
    # the new optimizer state, made before it replaces the old.
    buffers = state.trained * (2 if config.train.microbatches > 1 else 1) + opt
    # FSDP gathers one block's weights whole (compute dtype) and makes its fp32 gradient
    # (none for LoRA's frozen base) before reducing it back into shards.
    layer_params = (matmul_params(shapes.model) - shapes.model.vocab_size
                    * shapes.model.d_model) / shapes.model.num_layers
    gradient_width = 0 if config.model.lora.rank else 4
    gathered = (layer_params * (_compute_width(config.model) + gradient_width)
                / sizes["tensor"] if sizes["fsdp"] > 1 else 0.0)
    estimate = params + opt + acts + buffers + gathered
    seq = config.data.seq_len
    flops = flops_per_token(shapes.model, seq)
    gib = lambda b: f"{b / 2**30:,.2f} GiB"  # noqa: E731
    lines = [
        f"model: {count / 1e9:.3f}B parameters, {config.model.num_layers} layers, "
        f"d_model {config.model.d_model}, seq_len {seq}, dtype {config.model.dtype}, "
        f"remat {config.model.remat}",
        f"mesh: {chips} devices = " + " x ".join(f"{a}={s}" for a, s in sizes.items()),
        f"global batch {config.train.batch_size} x {seq} tokens, "
        f"{config.train.microbatches} microbatch(es)",
        f"per device: params {gib(params)}, optimizer state {gib(opt)}, "
        f"activations ~{gib(acts)}, gradients and updates ~{gib(buffers)}, one block's "
        f"gathered weights and gradient ~{gib(gathered)} (estimates), "
        f"total ~{gib(estimate)}",
        f"FLOPs per token: {flops:.3e} (6N + 12·L·d·T, non-causal attention)",
    ]
    if config.model.lora.rank:
        lora = config.model.lora
        base = config.model.param_dtype if lora.quantize == "none" else lora.quantize
        lines.insert(1, f"LoRA rank {lora.rank} on {lora.targets}: {state.trained_count:,} "
                        f"trained parameters, the base frozen in {base}")
    compiled, failure = None, ""
    if compile_step:
        devices, skipped = _devices_to_compile_for(slice_name, chip, chips, num_slices)
        if devices is None:
            lines.append(skipped)
        else:
            try:
                compiled = compile_step_memory(config, devices)
                lines.extend(_compiled_lines(compiled, estimate))
            except jax.errors.JaxRuntimeError as err:
                failure = " ".join(str(err).split())[:400]
                lines.append(f"XLA could not compile the step for {len(devices)} "
                             f"{devices[0].device_kind} devices: {failure}")
    if chip is not None:
        usable = chip.hbm_bytes * USABLE_FRACTION
        total = compiled.total if compiled else estimate
        if failure:
            verdict = ("does NOT fit (XLA ran out of memory compiling it)"
                       if "RESOURCE_EXHAUSTED" in failure else "does not compile")
            lines.append(f"{chip.name}: {gib(chip.hbm_bytes)} HBM per chip; {verdict}")
        else:
            verdict = "fits" if total <= usable else "does NOT fit"
            source = "XLA's compiled figures" if compiled else "the formula estimate"
            lines.append(f"{chip.name}: {gib(chip.hbm_bytes)} HBM per chip; {verdict} "
                         f"({total / chip.hbm_bytes:.0%} of HBM by {source}, "
                         f"{USABLE_FRACTION:.0%} usable)")
        tokens_per_chip = config.train.batch_size * seq / chips
        step_time = flops * tokens_per_chip / chip.peak_flops
        lines.append(f"step time at 100% MFU: {step_time:.2f} s; at 50%: {2 * step_time:.2f} s")
        if compiled and not failure and chip.platform == compiled.platform:
            line = roofline(compiled.costs, chip, flops * tokens_per_chip,
                            attention_mask_fraction(config))
            lines.extend(roofline_lines(line, tokens_per_chip))
    return "\n".join(lines)


def attention_mask_fraction(config: Config) -> float:
    """Share of (query, key) pairs a causal attention kernel computes: about half, or the
    window's share of the sequence when every layer is local."""
    window, seq = config.model.sliding_window, config.data.seq_len
    if window and not config.model.global_every:
        return min(0.5, window / seq)
    return 0.5


def _devices_to_compile_for(slice_name: str, chip: Chip | None, chips: int,
                            num_slices: int) -> tuple[list | None, str]:
    """(devices, "") to compile the step on: this process's when they are the slice, libtpu's
    compile-only TPU devices for a TPU slice elsewhere; else (None, why not)."""
    here = f"{jax.device_count()} {jax.default_backend()} devices"
    if chips == jax.device_count() and (chip is None or chip.platform == jax.default_backend()):
        return jax.devices(), ""
    if chip is not None and chip.platform == "tpu":
        from llm_jax.parallel.tpu_topology import compile_only_devices

        generation = slice_name.lower().split("-")[0]
        try:
            return compile_only_devices(generation, chips // num_slices, num_slices), ""
        except UserError as err:
            return None, f"(ahead-of-time compile skipped: {err})"
    return None, (f"(ahead-of-time compile skipped: this process has {here}, the plan is "
                  f"for {chips} {chip.name if chip else 'devices'})")


def _readable_size(num_bytes: float) -> str:
    if num_bytes >= 2**30:
        return f"{num_bytes / 2**30:,.2f} GiB"
    return f"{num_bytes / 2**20:,.1f} MiB"


def _compiled_lines(compiled: Compiled, estimate: float) -> list[str]:
    size = _readable_size
    lines = [f"compiled the step ahead of time for {compiled.where}: XLA reports "
             f"{size(compiled.total)} per device (arguments {size(compiled.arguments)}, "
             f"outputs {size(compiled.outputs)}, temporaries {size(compiled.temporaries)}, "
             f"aliased {size(compiled.aliased)}); the formula's total is "
             f"{estimate / compiled.total - 1:+.0%} off"]
    costs = compiled.costs
    sent = ", ".join(f"{kind} {size(sent)}"
                     for kind, sent in sorted(costs.collective_bytes.items()))
    lines.append(f"counted in the compiled step per device, every loop iteration: "
                 f"{costs.matmul_flops:.3e} matmul FLOPs, {size(costs.hbm_bytes)} of HBM "
                 f"traffic, {size(costs.total_collective_bytes)} sent by collectives"
                 + (f" ({sent})" if sent else "")
                 + (f"; {costs.unknown_loops} loop(s) of unknown trip count counted once"
                    if costs.unknown_loops else ""))
    if compiled.flops:
        lines.append(f"XLA's own cost analysis: {compiled.flops:.3e} FLOPs, "
                     f"{size(compiled.bytes_accessed or 0)} of memory traffic (each loop body, "
                     "scanned layers and microbatches, counted once)")
    return lines


def compile_step_memory(config: Config, devices: list) -> Compiled:
    """Compiles the real train step over a mesh of `devices` for abstract inputs; XLA's memory
    and cost analyses of it."""
    from llm_jax.parallel.mesh import make_mesh
    from llm_jax.train.batch_fields import batch_fields
    from llm_jax.train.build import compile_step_for

    mesh = make_mesh(config, devices)
    tx = make_optimizer(config.optimizer, config.train.steps)
    rules = axis_rules(config.mesh.rules)
    abstract, specs = abstract_train_state(_with_xla_attention(config), tx)
    shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, shardings)
    step, data = compile_step_for(config, mesh, tx, shardings)
    shape = (config.train.batch_size, config.data.seq_len)
    batch = {name: jax.ShapeDtypeStruct(shape, dtype, sharding=data)
             for name, dtype in batch_fields(config).items()}  # the objective's batch
    with sharding_context(mesh, rules):
        compiled = step.jitted.lower(abstract, batch).compile()
    where = f"{len(devices)} {devices[0].device_kind} devices"
    memory = compiled.memory_analysis()
    if memory is None:
        raise UserError(f"XLA gives no memory analysis for {where}; plan with --no-compile")
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
    return Compiled(where, devices[0].platform, memory.argument_size_in_bytes,
                    memory.output_size_in_bytes, memory.temp_size_in_bytes,
                    memory.alias_size_in_bytes,
                    cost.get("flops"), cost.get("bytes accessed"),
                    step_costs(compiled.as_text(), len(devices)))
