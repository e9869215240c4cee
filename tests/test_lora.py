"""LoRA and its quantized bases: an adapted model equals its merged plain model, int8 and nf4
codes are the published ones, a LoRA step trains the adapters alone, and 8 devices compute
what one does."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm
from sharded_run import BASE, batches, run

from llm_jax.config import ConfigError, LoraConfig, ModelConfig, load_config
from llm_jax.model import Transformer, init_params
from llm_jax.model.lora import merge_adapters
from llm_jax.model.quantize import NF4_LEVELS, dequantize, quantize
from llm_jax.parallel.mesh import make_mesh
from llm_jax.train import trainable
from llm_jax.train.build import build_training

MODEL = ModelConfig(vocab_size=128, d_model=128, num_layers=2, num_heads=4, num_kv_heads=2,
                    mlp_dim=192, max_seq_len=32)


def random_adapters(params, seed=1, scale=0.05):
    """B is zero at init, which would make any adapter test pass: draw it instead."""
    def draw(path, leaf):
        name = str(path[-1].key)
        if name.endswith("_lora_b"):
            key = jax.random.fold_in(jax.random.key(seed), hash(jax.tree_util.keystr(path)) % 997)
            return scale * jax.random.normal(key, leaf.shape, leaf.dtype)
        return leaf

    return jax.tree_util.tree_map_with_path(draw, params)


@pytest.mark.parametrize("quantize_base", ["none", "bfloat16", "int8", "nf4"])
@pytest.mark.parametrize("targets", ["q,k,v,o,gate,up,down", "q,v"])
def test_adapted_model_equals_its_merged_plain_model(quantize_base, targets):
    adapted = dataclasses.replace(MODEL, lora=LoraConfig(rank=4, alpha=8.0, targets=targets,
                                                         quantize=quantize_base))
    params = random_adapters(init_params(adapted, jax.random.key(0)))
    tokens = jax.random.randint(jax.random.key(2), (2, 24), 0, MODEL.vocab_size)
    logits = Transformer(adapted).apply({"params": params}, tokens)
    merged = merge_adapters(adapted, params)
    plain = Transformer(MODEL).apply({"params": merged}, tokens)
    np.testing.assert_allclose(logits, plain, rtol=1e-5, atol=1e-5)
    # and the adapters matter: without them the function differs
    zeroed = Transformer(adapted).apply({"params": trainable.merge(
        jax.tree.map(jnp.zeros_like, trainable.split(params)[0]), trainable.split(params)[1])},
        tokens)
    assert float(jnp.max(jnp.abs(zeroed - logits))) > 1e-3


def test_nf4_levels_are_qloras_normal_quantiles():
    """QLoRA's construction (bitsandbytes' create_normal_map): 8 positive and 7 negative
    quantiles of N(0, 1) at offset 0.9677, an exact zero, scaled to [-1, 1]."""
    offset = 0.9677083
    positive = norm.ppf(np.linspace(offset, 0.5, 9)[:-1])
    negative = -norm.ppf(np.linspace(offset, 0.5, 8)[:-1])
    levels = np.sort(np.concatenate([positive, [0.0], negative]))
    np.testing.assert_allclose(NF4_LEVELS, levels / levels.max(), atol=1e-6)


def test_quantized_values_are_the_nearest_codes():
    w = jax.random.normal(jax.random.key(0), (3, 128, 4, 16)) * 0.02  # [layers, in, heads, hd]
    q8 = quantize(w, "int8", 1, 2)
    back = dequantize(q8, w.shape, jnp.float32)
    column_scale = np.max(np.abs(np.asarray(w).reshape(3, 128, 64)), axis=1) / 127
    error = np.abs(np.asarray(back - w)).reshape(3, 128, 64)
    assert np.all(error <= column_scale[:, None, :] * 0.5 + 1e-9)  # round to nearest
    assert np.all(np.abs(np.asarray(q8["codes"])).max(axis=1) == 127)  # each column's max

    for along_outputs, blocks_axis in ((False, 1), (True, 2)):  # the inputs, or the outputs
        q4 = quantize(w, "nf4", 1, 2, along_outputs)
        assert q4["codes"].dtype == jnp.uint8 and q4["codes"].size == w.size // 2
        matrix = np.asarray(w).reshape(3, 128, 64)
        blocks = (matrix.reshape(3, 2, 64, 64) if blocks_axis == 1
                  else matrix.reshape(3, 128, 1, 64).swapaxes(2, 3))  # [.., block, 64, ..]
        absmax = np.max(np.abs(blocks), axis=2, keepdims=True)
        nearest = NF4_LEVELS[np.argmin(np.abs(blocks[..., None] / absmax[..., None]
                                              - NF4_LEVELS), axis=-1)] * absmax
        nearest = nearest if blocks_axis == 1 else nearest.swapaxes(2, 3)
        np.testing.assert_allclose(dequantize(q4, w.shape, jnp.float32, along_outputs),
                                   nearest.reshape(w.shape), rtol=1e-6, atol=1e-9)


def test_lora_settings_are_checked():
    with pytest.raises(ConfigError, match="model.lora.targets entry"):
        LoraConfig(rank=4, targets="q,w_out")
    with pytest.raises(ConfigError, match="needs adapters"):
        LoraConfig(quantize="nf4")
    with pytest.raises(ConfigError, match="not a multiple of 64"):
        load_config("tiny", ["model.lora.rank=4", "model.lora.quantize=nf4", "model.d_model=96",
                             "model.num_heads=4", "model.num_kv_heads=2"])
    config = load_config("tiny", BASE + ["model.d_model=128", "model.lora.rank=4",
                                         "model.lora.quantize=nf4", "mesh.fsdp=4",
                                         "mesh.tensor=2"])
    with pytest.raises(ConfigError, match="nf4 blocks"):  # 2 kv heads x 32: one block, 2 shards
        make_mesh(config)
    make_mesh(dataclasses.replace(config, mesh=dataclasses.replace(config.mesh, fsdp=8,
                                                                   tensor=1)))  # any fsdp


LORA = ["model.lora.rank=4", "model.lora.alpha=8", "optimizer.lr=3e-2"]


def test_a_lora_step_trains_only_the_adapters():
    config = load_config("tiny", BASE + LORA + ["mesh.fsdp=1"])
    training = build_training(config, make_mesh(config, jax.devices()[:1]), jax.random.key(0))
    before = jax.device_get(training.state.params)
    optimized = jax.tree.leaves(training.state.opt_state)
    adapters = jax.tree.leaves(trainable.split(before)[0])
    # AdamW's two moments of each adapter matrix, and nothing of the frozen base
    assert sum(x.size for x in optimized if x.ndim) == 2 * sum(x.size for x in adapters)
    state = training.state
    for batch in batches(count=3):
        state, _ = training.step(state, training.put_batch(batch))
    after = jax.device_get(state.params)
    trained_before, frozen_before = trainable.split(before)
    trained_after, frozen_after = trainable.split(after)
    jax.tree.map(np.testing.assert_array_equal, frozen_after, frozen_before)
    moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), trained_after, trained_before)
    assert all(jax.tree.leaves(moved))


@pytest.fixture(scope="module")
def lora_single_device():
    return run(LORA + ["mesh.fsdp=1"], 1)


@pytest.mark.parametrize("mesh", [["mesh.fsdp=8"], ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"],
                                  ["mesh.fsdp=1", "mesh.tensor=2", "mesh.pipe=4",
                                   "train.microbatches=4"]])
def test_lora_on_8_devices_equals_one_device(lora_single_device, mesh):
    loss, grads, losses = run(LORA + mesh, 8)
    ref_loss, ref_grads, ref_losses = lora_single_device
    np.testing.assert_allclose(loss, ref_loss, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), grads, ref_grads)
    np.testing.assert_allclose(losses, ref_losses, atol=1e-5)
    b_grads = trainable.split(ref_grads)[0]["layers"]["blocks"]["attn"]["q_lora_b"]
    assert np.abs(b_grads).max() > 1e-4  # the adapters get a gradient from the first step


def test_int8_lora_on_8_devices_equals_one_device():
    quantized = LORA + ["model.lora.quantize=int8"]
    _, _, one = run(quantized + ["mesh.fsdp=1"], 1)
    _, _, eight = run(quantized + ["mesh.fsdp=4", "mesh.tensor=2"], 8)
    np.testing.assert_allclose(eight, one, atol=1e-5)
