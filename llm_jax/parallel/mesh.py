"""The device mesh from `mesh.*`, and the start-time checks that the run fits it.

Axes are ordered ("data", "pipe", "fsdp", "context", "tensor") so that tensor parallelism,
which talks most, lands on the closest devices, and data parallelism on the farthest. With
`dcn_*` factors the mesh is a hybrid one: those factors run across slices (or hosts) over the
data-center network, the rest over the chips' interconnect.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh

from llm_jax.config import NF4_BLOCK, Config, ConfigError, MeshConfig
from llm_jax.parallel.rules import MESH_AXES, axis_rules


def mesh_shape(mesh: MeshConfig, device_count: int) -> dict[str, int]:
    """Axis sizes with any -1 filled in; fails unless they multiply to `device_count`."""
    sizes = {axis: getattr(mesh, axis) for axis in MESH_AXES}
    fixed = math.prod(size for size in sizes.values() if size != -1)
    for axis, size in sizes.items():
        if size == -1:
            if device_count % fixed:
                raise ConfigError(
                    f"mesh.{axis}=-1 cannot fill {device_count} devices: the other axes "
                    f"multiply to {fixed}, which does not divide {device_count}"
                )
            sizes[axis] = device_count // fixed
    total = math.prod(sizes.values())
    if total != device_count:
        product = " x ".join(f"mesh.{a}={s}" for a, s in sizes.items())
        raise ConfigError(
            f"{product} = {total} devices, but this run has {device_count}; make the product "
            f"equal {device_count} (one axis may be -1 to take the rest)"
        )
    return sizes


def check_fits_mesh(config: Config, sizes: dict[str, int]) -> None:
    """Every divisibility the sharded step needs, each failing with what to change."""
    model, train = config.model, config.train
    tensor, pipe, fsdp = sizes["tensor"], sizes["pipe"], sizes["fsdp"]
    checks = [
        (model.num_heads % tensor, f"model.num_heads={model.num_heads}", "mesh.tensor", tensor),
        (model.num_kv_heads % tensor, f"model.num_kv_heads={model.num_kv_heads}", "mesh.tensor",
         tensor),
        (model.mlp_dim % tensor, f"model.mlp_dim={model.mlp_dim}", "mesh.tensor", tensor),
        (model.vocab_size % tensor, f"model.vocab_size={model.vocab_size}", "mesh.tensor",
         tensor),
        (model.d_model % fsdp, f"model.d_model={model.d_model}", "mesh.fsdp", fsdp),
        (model.num_layers % pipe, f"model.num_layers={model.num_layers}", "mesh.pipe", pipe),
        (config.data.seq_len % sizes["context"], f"data.seq_len={config.data.seq_len}",
         "mesh.context", sizes["context"]),
    ]
    if model.lora.quantize == "nf4":  # each device holds whole blocks (none along `embed`)
        hd = model.resolved_head_dim
        blocked = {"model.num_heads x head dim": model.num_heads * hd,
                   "model.num_kv_heads x head dim": model.num_kv_heads * hd,
                   "model.mlp_dim": model.mlp_dim}
        checks += [((size // NF4_BLOCK) % tensor, f"{key}={size} / {NF4_BLOCK} (nf4 blocks)",
                    "mesh.tensor", tensor) for key, size in blocked.items()]
    for remainder, what, axis, size in checks:
        if remainder:
            raise ConfigError(f"{what} is not divisible by {axis}={size}; change one of them")
    if sizes["context"] > 1 and model.attention in ("splash", "cudnn"):
        raise ConfigError(f"model.attention={model.attention} runs on whole sequences; with "
                          "mesh.context > 1 use xla, blockwise or dot_product, whose scores "
                          "XLA computes from the gathered keys and values")
    experts = model.moe.experts
    if sizes["expert"] > 1 and (not experts or experts % sizes["expert"]):
        raise ConfigError(f"mesh.expert={sizes['expert']} splits the experts over devices: it "
                          f"must divide model.moe.experts={experts}")
    if experts and pipe > 1:
        raise ConfigError("model.moe runs without a pipeline schedule (its router losses "
                          "are not carried between stages); use mesh.pipe=1")
    shards = sizes["data"] * fsdp * sizes["expert"] * train.microbatches
    if train.batch_size % shards:
        raise ConfigError(
            f"train.batch_size={train.batch_size} is not divisible by mesh.data x mesh.fsdp x "
            f"mesh.expert x train.microbatches = {sizes['data']} x {fsdp} x {sizes['expert']} "
            f"x {train.microbatches} = {shards}"
        )


def _device_grid(mesh: MeshConfig, sizes: dict[str, int], devices) -> np.ndarray:
    dcn = {axis: getattr(mesh, f"dcn_{axis}") for axis in MESH_AXES}
    if math.prod(dcn.values()) > 1:
        for axis in MESH_AXES:
            if sizes[axis] % dcn[axis]:
                raise ConfigError(f"mesh.dcn_{axis}={dcn[axis]} must divide mesh.{axis}="
                                  f"{sizes[axis]}")
        ici = [sizes[a] // dcn[a] for a in MESH_AXES]
        return mesh_utils.create_hybrid_device_mesh(ici, [dcn[a] for a in MESH_AXES], devices)
    shape = [sizes[a] for a in MESH_AXES]
    if devices[0].platform in ("tpu", "gpu"):
        try:
            return mesh_utils.create_device_mesh(shape, devices)
        except NotImplementedError as err:  # a size that no set of the torus's axes makes
            sizes_text = " x ".join(f"mesh.{a}={sizes[a]}" for a in MESH_AXES)
            raise ConfigError(f"{sizes_text} does not map onto these {len(devices)} devices' "
                              f"physical topology: {str(err).split('.')[0]}; make each mesh "
                              "axis a product of the slice's torus dimensions") from None
    return np.asarray(devices).reshape(shape)


def make_mesh(config: Config, devices=None) -> Mesh:
    """The run's mesh over all devices of all processes, after checking the run fits it."""
    devices = list(devices if devices is not None else jax.devices())
    axis_rules(config.mesh.rules)  # fails early on a malformed mesh.rules
    sizes = mesh_shape(config.mesh, len(devices))
    check_fits_mesh(config, sizes)
    return Mesh(_device_grid(config.mesh, sizes, devices), MESH_AXES)
