"""Per-device step costs read from compiled HLO, every loop iteration counted."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from llm_jax.chips import CHIPS
from llm_jax.config import load_config
from llm_jax.hlo_costs import step_costs
from llm_jax.parallel.tpu_topology import compile_only_devices, libtpu_installed
from llm_jax.plan import attention_mask_fraction, compile_step_memory
from llm_jax.roofline import roofline
from llm_jax.train.flops import flops_per_token

M, K, N = 64, 128, 96


def _compiled(fn, *args):
    return jax.jit(fn).lower(*args).compile()


def test_matmul_flops_equal_xlas_count_without_loops():
    x, w1, w2 = jnp.ones((M, K)), jnp.ones((K, N)), jnp.ones((N, K))
    compiled = _compiled(lambda x, a, b: (x @ a) @ b, x, w1, w2)
    costs = step_costs(compiled.as_text(), 1)
    assert costs.matmul_flops == 2 * M * K * N * 2
    assert costs.matmul_flops == pytest.approx(compiled.cost_analysis()["flops"], rel=0.02)


def test_a_scan_body_counts_once_per_iteration():
    """XLA's own cost analysis counts the loop body once; the step runs it `steps` times."""
    steps = 7
    x, w = jnp.ones((M, K)), jnp.ones((K, K))

    def body(carry, _):
        return jnp.tanh(carry @ w), None

    compiled = _compiled(lambda x: jax.lax.scan(body, x, None, length=steps)[0], x)
    costs = step_costs(compiled.as_text(), 1)
    assert costs.unknown_loops == 0
    assert costs.matmul_flops == steps * 2 * M * K * K
    assert compiled.cost_analysis()["flops"] < 2 * (2 * M * K * K)  # the body, once


def test_collectives_count_the_bytes_each_device_sends():
    devices = np.array(jax.devices()[:8])
    assert len(devices) == 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
    mesh = jax.sharding.Mesh(devices, ("x",))
    sharded = NamedSharding(mesh, PartitionSpec("x"))
    whole = NamedSharding(mesh, PartitionSpec())
    x = jax.device_put(jnp.ones((8, 1024)), sharded)
    gather = jax.jit(lambda v: v * 2, out_shardings=whole).lower(x).compile()
    gathered = step_costs(gather.as_text(), 8).collective_bytes
    assert gathered == {"all-gather": 7 / 8 * 8 * 1024 * 4}  # ring: 7 of 8 pieces
    reduce = jax.jit(lambda v: v.sum(0), out_shardings=whole).lower(x).compile()
    reduced = step_costs(reduce.as_text(), 8).collective_bytes
    assert reduced == {"all-reduce": 2 * 7 / 8 * 1024 * 4}  # reduce-scatter + all-gather


@pytest.mark.skipif(not libtpu_installed(), reason="needs the tpu extra (libtpu)")
def test_tpu_convolutions_count_the_models_flops_scanned_or_unrolled():
    """TPU's XLA lowers matmuls to convolutions: their count agrees with 6N + 12·L·d·T
    (the embedding is a gather, so slightly fewer), whether the layers run in a loop or not."""
    counted = {}
    for unroll in (1, 4):
        config = load_config("tiny", ["mesh.fsdp=8", "train.loss_chunk=0",
                                      f"model.scan_unroll={unroll}"])
        compiled = compile_step_memory(config, compile_only_devices("v5e", 8))
        counted[unroll] = compiled.costs.matmul_flops
    tokens = config.train.batch_size * config.data.seq_len / 8
    formula = flops_per_token(config.model, config.data.seq_len) * tokens
    assert counted[1] == pytest.approx(counted[4], rel=0.03)
    assert 0.9 * formula < counted[1] < formula
    line = roofline(compiled.costs, CHIPS["v5e"], formula, 0.5)
    assert line.compute_s == pytest.approx(counted[4] / CHIPS["v5e"].peak_flops)
    assert line.step_s == max(line.compute_s, line.memory_s, line.collective_s) > 0
    assert line.mfu == pytest.approx(formula / (line.step_s * CHIPS["v5e"].peak_flops))


@pytest.mark.skipif(not libtpu_installed(), reason="needs the tpu extra (libtpu)")
def test_tpu_splash_kernel_flops_are_counted():
    """Splash attention's FLOPs are in no HLO op: each layer's forward, dq and dkv kernels do
    2, 3 and 4 matmuls per (query, key) pair, about half the pairs under a causal mask."""
    config = load_config("tiny", ["model.attention=splash", "mesh.fsdp=8", "model.remat=none"])
    costs = compile_step_memory(config, compile_only_devices("v5e", 8)).costs
    line = roofline(costs, CHIPS["v5e"], 1.0, attention_mask_fraction(config))
    assert line.unknown_kernels == ()
    m, seq = config.model, config.data.seq_len
    batch = config.train.batch_size // 8  # rows per device
    pairs = batch * m.num_heads * seq * seq * 0.5
    kernel_flops = line.compute_s * CHIPS["v5e"].peak_flops - costs.matmul_flops
    expected = m.num_layers * (2 + 3 + 4) * 2 * pairs * m.resolved_head_dim
    assert kernel_flops == pytest.approx(expected)


@pytest.mark.skipif(not libtpu_installed(), reason="needs the tpu extra (libtpu)")
def test_tpu_mixture_of_experts_runs_megablox_and_its_flops_are_counted():
    """On TPU the experts' grouped matmuls are megablox kernels (gate, up and down forward;
    two gradients each), whose FLOPs the HLO lacks: each token copy meets one expert, so
    per layer 3 matmuls x 3 (forward, input and weight gradient) x 2·(rows·k)·d·f."""
    config = load_config("tiny", ["model.moe.experts=4", "model.moe.top_k=2", "mesh.fsdp=8",
                                  "model.remat=none", "model.d_model=128", "model.mlp_dim=256",
                                  "model.num_heads=4", "model.num_kv_heads=2",
                                  "data.seq_len=128", "model.max_seq_len=128"])
    costs = compile_step_memory(config, compile_only_devices("v5e", 8)).costs
    assert any("gmm" in call.name for call in costs.custom_calls)
    line = roofline(costs, CHIPS["v5e"], 1.0, attention_mask_fraction(config))
    assert line.unknown_kernels == ()
    m = config.model
    copies = config.train.batch_size // 8 * config.data.seq_len * m.moe.top_k  # per device
    expected = m.num_layers * 3 * 3 * 2 * copies * m.d_model * m.mlp_dim
    kernel_flops = line.compute_s * CHIPS["v5e"].peak_flops - costs.matmul_flops
    assert kernel_flops == pytest.approx(expected)
