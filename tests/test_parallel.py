"""Sharded runs on 8 simulated devices compute what the single-device run computes."""

import jax
import numpy as np
import pytest
from sharded_run import BASE, run

from llm_jax.config import ConfigError, load_config
from llm_jax.parallel.mesh import make_mesh
from llm_jax.parallel.rules import axis_rules
from llm_jax.parallel.sharding import batch_sharding
from llm_jax.train.optimizer import make_optimizer
from llm_jax.train.state import create_train_state


@pytest.fixture(scope="module")
def single_device():
    return run(["mesh.fsdp=1"], 1)


MESHES = {
    "data=8": ["mesh.data=8", "mesh.fsdp=1"],
    "fsdp=8": ["mesh.fsdp=8"],
    "fsdp=4,tensor=2": ["mesh.fsdp=4", "mesh.tensor=2"],
    "data=4,pipe=2": ["mesh.data=4", "mesh.fsdp=1", "mesh.pipe=2", "train.microbatches=2"],
    "tensor=2,pipe=4": ["mesh.fsdp=1", "mesh.tensor=2", "mesh.pipe=4", "train.microbatches=4"],
    "data=2,fsdp=2,tensor=2": ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"],
    "accumulate=4 on 1 device": ["mesh.fsdp=1", "train.microbatches=4"],
    # The reference fuses the output projection with the loss; these make whole logits.
    "fsdp=4,tensor=2 whole logits": ["mesh.fsdp=4", "mesh.tensor=2", "train.loss_chunk=0"],
    "whole logits on 1 device": ["mesh.fsdp=1", "train.loss_chunk=0"],
}


@pytest.mark.parametrize("name", MESHES)
def test_sharded_run_matches_single_device(single_device, name):
    devices = 1 if "1 device" in name else 8
    loss, grads, losses = run(MESHES[name], devices)
    ref_loss, ref_grads, ref_losses = single_device
    np.testing.assert_allclose(loss, ref_loss, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), grads, ref_grads)
    np.testing.assert_allclose(losses, ref_losses, atol=1e-5)
    assert len(set(losses)) > 1  # the parameters did move


def test_fsdp_shards_weights_and_optimizer_state():
    config = load_config("tiny", BASE + ["mesh.fsdp=8"])
    mesh = make_mesh(config)
    tx = make_optimizer(config.optimizer, 5)
    state, _ = create_train_state(config, mesh, tx, jax.random.key(0))
    adam = state.opt_state[1][0]
    checked = 0
    for tree in (state.params, adam.mu, adam.nu):
        for leaf in jax.tree.leaves(tree):
            if leaf.size >= 64 * 64:
                shard = leaf.addressable_shards[0].data
                assert shard.size * 8 == leaf.size, leaf.shape
                checked += 1
    assert checked >= 3 * 8


LONG = ["data.seq_len=1024", "model.max_seq_len=1024", "train.batch_size=4", "model.num_layers=2"]


@pytest.fixture(scope="module")
def single_device_long():
    return run(["mesh.fsdp=1", *LONG], 1)


@pytest.mark.parametrize("overrides", [["mesh.fsdp=1", "mesh.context=8"],
                                       ["mesh.fsdp=2", "mesh.context=2", "mesh.tensor=2"]],
                         ids=["context=8", "fsdp=2,context=2,tensor=2"])
def test_context_parallel_run_matches_single_device(single_device_long, overrides):
    """Each device holds 1/context of every sequence (1024 positions, two documents per row):
    the same loss, gradients and training losses as one device."""
    loss, grads, losses = run([*overrides, *LONG], 8)
    ref_loss, ref_grads, ref_losses = single_device_long
    np.testing.assert_allclose(loss, ref_loss, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), grads, ref_grads)
    np.testing.assert_allclose(losses, ref_losses, atol=1e-5)


def test_context_parallelism_shards_activations_over_the_sequence():
    config = load_config("tiny", BASE + ["mesh.fsdp=1", "mesh.context=8", *LONG])
    batch = jax.device_put(np.zeros((4, 1024), np.int32),
                           batch_sharding(make_mesh(config), axis_rules()))
    assert {s.data.shape for s in batch.addressable_shards} == {(4, 128)}


@pytest.mark.parametrize("overrides, message", [
    (["mesh.data=3", "mesh.fsdp=1"], "= 3 devices, but this run has 8"),
    (["mesh.fsdp=1", "mesh.context=8", "data.seq_len=36", "model.max_seq_len=64"],
     "data.seq_len=36 is not divisible by mesh.context=8"),
    (["mesh.fsdp=1", "mesh.context=8", "model.attention=splash"],
     "model.attention=splash runs on whole sequences"),
    (["mesh.fsdp=-1", "mesh.tensor=3"], "cannot fill 8 devices"),
    (["mesh.fsdp=1", "mesh.tensor=8"], "model.num_heads=4 is not divisible by mesh.tensor=8"),
    (["mesh.fsdp=2", "mesh.tensor=4"], "model.num_kv_heads=2 is not divisible by mesh.tensor=4"),
    (["mesh.fsdp=1", "mesh.pipe=8"], "model.num_layers=4 is not divisible by mesh.pipe=8"),
    (["mesh.fsdp=8", "train.batch_size=12", "train.microbatches=1"],
     r"train.batch_size=12 is not divisible by mesh.data x mesh.fsdp x mesh.expert x "
     r"train.microbatches"),
    (["mesh.rules=embed:fsdpp"], "unknown mesh axis fsdpp"),
])
def test_impossible_meshes_fail_with_what_to_change(overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_mesh(load_config("tiny", BASE + overrides))
