"""Mixture of experts against `transformers`' Mixtral (logits, load-balancing loss, import and
export), capacity-factor dropping against a loop written here, shared experts, and 8 devices
against one."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from sharded_run import BASE, run

from llm_jax.config import ConfigError, ModelConfig, MoeConfig, load_config
from llm_jax.convert.hf_export import write_hf_checkpoint
from llm_jax.convert.hf_import import read_hf_checkpoint
from llm_jax.model import Transformer, init_params
from llm_jax.model.moe import LOSSES, _with_capacity, grouped_matmul, router_loss

MIXTRAL = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
               num_experts_per_tok=2, max_position_embeddings=64, rope_theta=10000.0)


def hf_mixtral(tmp_path, **overrides):
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    model = MixtralForCausalLM(MixtralConfig(**{**MIXTRAL, **overrides})).eval()
    with torch.no_grad():  # HF's init leaves the router near uniform: sharpen it
        for layer in model.model.layers:
            layer.mlp.gate.weight.mul_(20.0)
    model.save_pretrained(tmp_path)
    return model


def tokens(batch=2, length=24, seed=0):
    return np.random.default_rng(seed).integers(0, MIXTRAL["vocab_size"], (batch, length))


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


@pytest.mark.parametrize("window", [None, 8])
def test_imported_mixtral_computes_transformers_logits(tmp_path, window):
    hf = hf_mixtral(tmp_path, sliding_window=window)
    config, params = read_hf_checkpoint(tmp_path)
    assert config.moe == MoeConfig(experts=4, top_k=2, aux_loss=hf.config.router_aux_loss_coef,
                                   z_loss=0.0)
    assert config.sliding_window == (window or 0)
    ids = tokens()
    ours = Transformer(config).apply({"params": params}, jnp.asarray(ids))
    np.testing.assert_allclose(ours, hf_logits(hf, ids), atol=1e-4)


def test_exported_moe_loads_in_transformers_as_the_same_function(tmp_path):
    from transformers import MixtralForCausalLM

    config = ModelConfig(vocab_size=128, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
                         mlp_dim=96, max_seq_len=64, moe=MoeConfig(experts=4, top_k=2))
    params = init_params(config, jax.random.key(3))
    write_hf_checkpoint(config, params, tmp_path)
    hf = MixtralForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = tokens(seed=1)
    np.testing.assert_allclose(Transformer(config).apply({"params": params}, jnp.asarray(ids)),
                               hf_logits(hf, ids), atol=1e-4)
    _, again = read_hf_checkpoint(tmp_path)
    jax.tree.map(np.testing.assert_array_equal, again, jax.device_get(params))


def test_load_balancing_loss_equals_transformers(tmp_path):
    hf = hf_mixtral(tmp_path)
    config, params = read_hf_checkpoint(tmp_path)
    ids = tokens(batch=3, length=20, seed=2)
    with torch.no_grad():
        out = hf(torch.tensor(ids), output_router_logits=True)
    _, state = Transformer(config).apply({"params": params}, jnp.asarray(ids), mutable=[LOSSES])
    balance_only = dataclasses.replace(config.moe, aux_loss=1.0, z_loss=0.0)
    assert float(router_loss(balance_only, state[LOSSES])) == pytest.approx(
        out.aux_loss.item(), rel=1e-5)
    # ST-MoE's z-loss from transformers' router logits: mean logsumexp^2, summed over layers
    z = sum(float(torch.logsumexp(logits, dim=-1).square().mean()) for logits in out.router_logits)
    z_only = dataclasses.replace(config.moe, aux_loss=0.0, z_loss=1.0)
    assert float(router_loss(z_only, state[LOSSES])) == pytest.approx(z, rel=1e-5)


def reference_capacity(x, experts, weights, kernels, capacity):
    """Each row's (token, choice) assignments in priority order (all first choices, then all
    second ones), an expert keeping its first `capacity`."""
    x, experts, weights = np.asarray(x), np.asarray(experts), np.asarray(weights)
    gate, up, down = (np.asarray(kernels[n], np.float64) for n in ("gate", "up", "down"))
    out = np.zeros(x.shape, np.float64)
    batch, length, k = experts.shape
    for b in range(batch):
        taken = {}
        for choice in range(k):
            for t in range(length):
                e = experts[b, t, choice]
                taken[e] = taken.get(e, 0) + 1
                if taken[e] > capacity:
                    continue
                g, u = x[b, t] @ gate[e], x[b, t] @ up[e]
                out[b, t] += weights[b, t, choice] * ((g / (1 + np.exp(-g))) * u) @ down[e]
    return out


@pytest.mark.parametrize("capacity_factor", [0.5, 1.0, 2.0])
def test_capacity_drops_what_the_reference_drops(capacity_factor):
    rng = np.random.default_rng(0)
    batch, length, k, experts, d, f = 2, 12, 2, 4, 8, 16
    x = rng.normal(size=(batch, length, d)).astype(np.float32)
    chosen = np.stack([rng.permutation(experts)[:k] for _ in range(batch * length)])
    chosen = chosen.reshape(batch, length, k)
    chosen[0, :, 0] = 1  # a crowded expert, so that something is dropped
    weights = rng.uniform(size=(batch, length, k)).astype(np.float32)
    kernels = {"gate": rng.normal(size=(experts, d, f)).astype(np.float32),
               "up": rng.normal(size=(experts, d, f)).astype(np.float32),
               "down": rng.normal(size=(experts, f, d)).astype(np.float32)}
    capacity = max(1, math.ceil(capacity_factor * length * k / experts))
    ours = _with_capacity(jnp.asarray(x), jnp.asarray(chosen), jnp.asarray(weights),
                          {n: jnp.asarray(v) for n, v in kernels.items()}, experts,
                          capacity_factor)
    np.testing.assert_allclose(ours, reference_capacity(x, chosen, weights, kernels, capacity),
                               rtol=1e-4, atol=1e-4)


def test_megablox_grouped_matmul_equals_ragged_dot_and_its_gradients():
    """The TPU kernel, run by the Pallas interpreter; groups of 100, 0, 60 and 96 rows."""
    x = jax.random.normal(jax.random.key(0), (256, 128))
    w = jax.random.normal(jax.random.key(1), (4, 128, 256))
    sizes = jnp.array([100, 0, 60, 96], jnp.int32)

    def loss(kind):
        return lambda x, w: jnp.sum(jnp.square(grouped_matmul(
            x, w, sizes, megablox=kind == "megablox", interpret=True)))

    np.testing.assert_allclose(grouped_matmul(x, w, sizes, megablox=True, interpret=True),
                               jax.lax.ragged_dot(x, w, sizes), rtol=1e-5, atol=1e-4)
    ours = jax.grad(loss("megablox"), argnums=(0, 1))(x, w)
    reference = jax.grad(loss("ragged_dot"), argnums=(0, 1))(x, w)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-2), ours,
                 reference)


def test_capacity_that_drops_nothing_equals_dropless():
    dropless = ModelConfig(vocab_size=128, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
                           mlp_dim=96, moe=MoeConfig(experts=4, top_k=2))
    roomy = dataclasses.replace(dropless, moe=MoeConfig(experts=4, top_k=2, capacity_factor=2.0))
    params = init_params(dropless, jax.random.key(0))
    ids = jnp.asarray(tokens())
    np.testing.assert_allclose(Transformer(roomy).apply({"params": params}, ids),
                               Transformer(dropless).apply({"params": params}, ids), atol=1e-5)


def test_shared_experts_run_on_every_token():
    """With every routed expert's down projection zeroed, only the shared MLP is left: the
    model computes what the dense model with those MLP weights computes."""
    moe = ModelConfig(vocab_size=128, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
                      mlp_dim=32, moe=MoeConfig(experts=4, top_k=2, shared_experts=2))
    params = init_params(moe, jax.random.key(0))
    mlp = params["layers"]["blocks"]["mlp"]
    silenced = {**params, "layers": {"blocks": {**params["layers"]["blocks"], "mlp": {
        **mlp, "down": jnp.zeros_like(mlp["down"])}}}}
    dense = dataclasses.replace(moe, mlp_dim=64, moe=MoeConfig())
    as_dense = {**params, "layers": {"blocks": {**params["layers"]["blocks"],
                                                "mlp": mlp["shared"]}}}
    ids = jnp.asarray(tokens())
    np.testing.assert_allclose(Transformer(moe).apply({"params": silenced}, ids),
                               Transformer(dense).apply({"params": as_dense}, ids), atol=1e-5)


def test_moe_settings_are_checked():
    with pytest.raises(ConfigError, match="exceeds model.moe.experts"):
        MoeConfig(experts=2, top_k=3)
    with pytest.raises(ConfigError, match="SwiGLU experts"):
        load_config("tiny", ["model.moe.experts=4", "model.mlp=gelu"])
    with pytest.raises(ConfigError, match="take no adapters"):
        load_config("tiny", ["model.moe.experts=4", "model.lora.rank=4"])
    from llm_jax.parallel.mesh import make_mesh
    with pytest.raises(ConfigError, match="must divide model.moe.experts"):
        make_mesh(load_config("tiny", BASE + ["model.moe.experts=4", "mesh.expert=8"]))


MOE = ["model.moe.experts=4", "model.moe.top_k=2", "model.moe.shared_experts=1"]


@pytest.fixture(scope="module")
def moe_single_device():
    return {kind: run(MOE + extra + ["mesh.fsdp=1"], 1)
            for kind, extra in (("dropless", []), ("capacity", ["model.moe.capacity_factor=1.25"]))}


@pytest.mark.parametrize("kind", ["dropless", "capacity"])
@pytest.mark.parametrize("mesh", [["mesh.fsdp=8"], ["mesh.fsdp=1", "mesh.expert=4",
                                                     "mesh.tensor=2"],
                                  ["mesh.data=2", "mesh.fsdp=2", "mesh.expert=2"]])
def test_moe_on_8_devices_equals_one_device(moe_single_device, kind, mesh):
    extra = ["model.moe.capacity_factor=1.25"] if kind == "capacity" else []
    loss, grads, losses = run(MOE + extra + mesh, 8)
    ref_loss, ref_grads, ref_losses = moe_single_device[kind]
    np.testing.assert_allclose(loss, ref_loss, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), grads, ref_grads)
    np.testing.assert_allclose(losses, ref_losses, atol=1e-5)
    router = ref_grads["layers"]["blocks"]["mlp"]["router"]
    assert np.abs(router).max() > 0  # the router learns, through the weights and its losses


def test_greedy_decoding_with_the_kv_cache_equals_transformers_mixtral(tmp_path):
    """Prefill, then one token at a time through the cache: the experts see single tokens,
    and every step's choice is transformers' own."""
    from llm_jax.infer.generator import Generator
    from llm_jax.infer.sampling import SamplingOptions

    hf = hf_mixtral(tmp_path)
    config, params = read_hf_checkpoint(tmp_path)
    prompts = [[1, 5, 9, 33, 41], [1, 7, 8, 9, 10, 11, 12, 13], [1, 20, 30]]
    expected = []
    for prompt in prompts:
        with torch.no_grad():
            out = hf.generate(input_ids=torch.tensor([prompt]), do_sample=False,
                              max_new_tokens=12, eos_token_id=-1, pad_token_id=0)
        expected.append(out[0, len(prompt):].tolist())
    generator = Generator(config, params, eos_ids=(), pad_id=0, length_bucket=16)
    assert generator.generate(prompts, SamplingOptions(max_new_tokens=12)) == expected
