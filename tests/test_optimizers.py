"""Lion, Adafactor, Muon, a bfloat16 first moment and ZeRO-1: each is the optax optimizer it
names, and a run on 8 simulated devices takes the steps a run on one device takes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sharded_run import BASE, run

from llm_jax.config import ConfigError, load_config
from llm_jax.parallel.mesh import make_mesh
from llm_jax.train.optimizer import make_optimizer, muon_dimensions
from llm_jax.train.state import create_train_state

MESH = ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]
VARIANTS = {
    "lion": (["optimizer.name=lion", "optimizer.lr=1e-3"], MESH),
    "adafactor": (["optimizer.name=adafactor", "model.d_model=128", "model.mlp_dim=256"], MESH),
    "muon": (["optimizer.name=muon"], MESH),
    # one compile for two switches: the moments sharded 8 ways over data, the first in bf16
    "adamw zero1 mu_dtype=bfloat16": (["optimizer.zero1=true", "optimizer.mu_dtype=bfloat16"],
                                      ["mesh.data=8", "mesh.fsdp=1"]),
}


def state_of(overrides, mesh_overrides=("mesh.fsdp=1",), devices=1):
    config = load_config("tiny", BASE + overrides + list(mesh_overrides))
    tx = make_optimizer(config.optimizer, 5)
    mesh = make_mesh(config, jax.devices()[:devices])
    return create_train_state(config, mesh, tx, jax.random.key(0))[0]


@pytest.mark.parametrize("name", VARIANTS)
def test_optimizer_on_8_devices_takes_the_steps_of_one(name):
    overrides, mesh = VARIANTS[name]
    loss, grads, losses = run(overrides + mesh, 8)
    ref_loss, ref_grads, ref_losses = run(overrides + ["mesh.fsdp=1"], 1)
    np.testing.assert_allclose(loss, ref_loss, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), grads, ref_grads)
    np.testing.assert_allclose(losses, ref_losses, atol=1e-4 if "bfloat16" in name else 1e-5)
    assert len(set(losses)) > 1  # the parameters did move


def _states(opt_state, kind) -> list:
    return [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, kind))
            if isinstance(s, kind)]


def test_each_name_builds_its_optax_optimizer():
    assert _states(state_of(["optimizer.name=lion"]).opt_state, optax.ScaleByLionState)
    factored = _states(state_of(["optimizer.name=adafactor", "model.d_model=128",
                                 "model.mlp_dim=256"]).opt_state, optax.FactoredState)
    mlp = factored[0].v_row["layers"]["blocks"]["mlp"]["up"]
    assert mlp.shape == (4, 128)  # factored: one row statistic per input feature and layer
    assert _states(state_of(["optimizer.name=muon"]).opt_state, optax.contrib.MuonState)
    adam = _states(state_of(["optimizer.mu_dtype=bfloat16"]).opt_state, optax.ScaleByAdamState)
    assert {leaf.dtype for leaf in jax.tree.leaves(adam[0].mu)} == {jnp.dtype("bfloat16")}
    assert {leaf.dtype for leaf in jax.tree.leaves(adam[0].nu)} == {jnp.dtype("float32")}


def test_zero1_shards_the_moments_over_data_and_keeps_parameters_whole():
    state = state_of(["optimizer.zero1=true"], ["mesh.data=8", "mesh.fsdp=1"], devices=8)
    [adam] = _states(state.opt_state, optax.ScaleByAdamState)
    up = state.params["layers"]["blocks"]["mlp"]["up"]
    assert up.addressable_shards[0].data.size == up.size  # replicated over data
    for moment in (adam.mu, adam.nu):
        leaf = moment["layers"]["blocks"]["mlp"]["up"]
        assert leaf.addressable_shards[0].data.size * 8 == leaf.size


def test_muon_orthogonalizes_each_layer_matrix_and_leaves_the_rest_to_adamw():
    state = state_of(["optimizer.name=muon"])
    dims = muon_dimensions(state.params)
    blocks = dims["layers"]["blocks"]
    assert all(blocks["attn"][name] is not None for name in "qkvo")
    assert all(blocks["mlp"][name] is not None for name in ("up", "gate", "down"))
    assert dims["embed"]["embedding"] is None and dims["lm_head"] is None
    assert blocks["attn_norm"]["scale"] is None
    constant = ["optimizer.name=muon", "optimizer.schedule=constant", "optimizer.warmup_steps=0"]
    tx = make_optimizer(load_config("tiny", BASE + constant).optimizer, 5)
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(1), p.shape) * jnp.linspace(
        0.2, 3.0, p.shape[-1]), state.params)  # columns of different scales
    updates, _ = tx.update(grads, tx.init(state.params), state.params)

    def spread(matrix):
        singular = np.linalg.svd(np.asarray(matrix), compute_uv=False)
        return singular.max() / singular.min()

    up = lambda tree: tree["layers"]["blocks"]["mlp"]["up"][0]  # noqa: E731  [64, 128]
    assert spread(up(grads)) > 5 and spread(up(updates)) < 2  # Newton-Schulz: near-orthogonal


def test_unknown_optimizer_is_a_config_error():
    with pytest.raises(ConfigError, match="optimizer.name='sgd' is not supported"):
        load_config("tiny", ["optimizer.name=sgd"])
