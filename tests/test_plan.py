"""`llm-jax plan`: memory per device without allocating, and an ahead-of-time compile."""

import dataclasses
import re

import jax
import pytest

import llm_jax.plan as plan_module
from llm_jax.chips import CHIPS, parse_slice
from llm_jax.cli import main
from llm_jax.config import ConfigError, load_config
from llm_jax.errors import UserError
from llm_jax.parallel.mesh import mesh_shape
from llm_jax.parallel.tpu_topology import compile_only_devices, libtpu_installed, topology_name
from llm_jax.plan import compile_step_memory, plan, state_bytes_per_device


def test_fsdp_divides_state_bytes_by_the_mesh():
    config = load_config("llama3-8b", ["mesh.fsdp=-1"])
    sizes = mesh_shape(config.mesh, 64)
    state = state_bytes_per_device(config, sizes)
    assert abs(state.count - 8.03e9) < 5e6
    assert state.params == pytest.approx(state.count * 4 / 64, rel=1e-3)
    assert state.optimizer == pytest.approx(2 * state.params, rel=1e-3)  # Adam's two moments
    assert state.trained == state.params


def test_lora_state_holds_moments_of_the_adapters_alone():
    """Llama 3 8B, rank 16 on the 7 matrices of its 32 layers, over fsdp=64. An adapter matrix
    is sharded where it has the `embed` axis (A of q, k, v, gate, up; B of o, down): 7 x 4096
    of each layer's 81,920 adapter rows and columns; the rest is replicated."""
    sizes = mesh_shape(load_config("llama3-8b", ["mesh.fsdp=-1"]).mesh, 64)
    d, kv, f = 4096, 1024, 14336
    per_layer = (d + d) + 2 * (d + kv) + (d + d) + 3 * (d + f)  # in + out of each matrix
    adapters = 16 * 32 * per_layer
    adapter_bytes = 16 * 32 * (7 * d / 64 + per_layer - 7 * d) * 4
    for base, width in (("none", 4), ("int8", 1), ("nf4", 0.5 + 4 / 64)):
        config = load_config("llama3-8b", ["mesh.fsdp=-1", "model.lora.rank=16",
                                           f"model.lora.quantize={base}"])
        state = state_bytes_per_device(config, sizes)
        assert state.trained_count == adapters == 41_943_040
        assert state.trained == pytest.approx(adapter_bytes, rel=1e-6)
        assert state.optimizer == pytest.approx(2 * adapter_bytes, rel=1e-6)  # Adam's moments
        matrices = 6.98e9  # of the blocks: the rest (embeddings, norms) stays fp32
        assert state.params == pytest.approx((matrices * width + (8.03e9 - matrices) * 4) / 64
                                             + adapter_bytes, rel=0.02)  # and int8's scales


def test_slices_count_chips_not_cores():
    chip, chips = parse_slice("v5p-128")
    assert chips == 64 and chip.hbm_bytes == 95 * 2**30
    assert parse_slice("v5e-256")[1] == 256
    with pytest.raises(ConfigError, match="must look like NAME-COUNT"):
        parse_slice("tpu7-8")


def test_llama3_8b_worked_examples():
    v5p = plan(load_config("llama3-8b", ["train.batch_size=512", "train.microbatches=4"]),
               "v5p-128", compile_step=False)
    assert "TPU v5p" in v5p and "; fits" in v5p
    too_big = plan(load_config("llama3-8b", ["train.batch_size=512"]), "v5e-256",
                   compile_step=False)
    assert "does NOT fit" in too_big


def test_plan_compiles_the_step_on_local_devices(capsys):
    assert jax.device_count() == 8
    assert main(["plan", "--config", "tiny", "mesh.fsdp=4", "mesh.tensor=2"]) == 0
    out = capsys.readouterr().out
    assert "compiled the step ahead of time" in out
    assert "fsdp=4 x context=1 x expert=1 x tensor=2" in out


@pytest.mark.parametrize("preset, slice_name", [("llama3-8b-v5p-128", "v5p-128"),
                                                ("llama3-8b-v5e-256", "v5e-256"),
                                                ("llama3-8b-v6e-256", "v6e-256"),
                                                ("llama3.1-70b-v5p-512", "v5p-512"),
                                                ("llama3.2-1b-v5e-8", "v5e-8"),
                                                ("llama3.2-1b-h100", "h100-1")])
def test_scale_out_presets_fit_their_slice(preset, slice_name):
    report = plan(load_config(preset), slice_name, compile_step=False)
    assert "; fits" in report, report


# --- compile-only TPU slices (libtpu, the `tpu` extra, which CI installs)

def _needs_libtpu() -> None:
    if not libtpu_installed():
        pytest.skip("libtpu is not installed: pip install -e '.[tpu]'")


def _compiled_percent(report: str) -> float:
    return float(re.search(r"(\d+)% of HBM by XLA's compiled figures", report).group(1))


@pytest.mark.parametrize("slice_name, overrides", [
    ("v5e-8", ["mesh.fsdp=4", "mesh.tensor=2"]),
    ("v5p-16", ["mesh.fsdp=4", "mesh.tensor=2", "model.attention=splash",
                "model.splash_block=128"]),
    ("v5p-16", ["mesh.pipe=2", "mesh.fsdp=4", "train.microbatches=4", "model.attention=splash"]),
    ("v6e-8", ["mesh.fsdp=8", "model.remat=full", "train.loss_chunk=64"]),
])
def test_plan_compiles_for_a_tpu_slice_this_machine_lacks(slice_name, overrides):
    _needs_libtpu()
    report = plan(load_config("tiny", overrides), slice_name)
    assert re.search(r"compiled the step ahead of time for 8 TPU v\d", report), report
    assert "counted in the compiled step per device, every loop iteration" in report
    assert re.search(r"step >= [\d.]+ m?s .*MFU <= [\d.]+%", report), report  # the roofline
    assert "fits (" in report and "by XLA's compiled figures" in report


@pytest.mark.parametrize("objective", ["dpo", "ppo"])  # sft and reward share their batches
def test_every_objective_compiles_for_a_tpu_slice(objective):
    _needs_libtpu()
    config = load_config("tiny", [f"train.objective={objective}", "post.data=pairs.jsonl",
                                  "mesh.fsdp=4", "mesh.tensor=2"])
    compiled = compile_step_memory(config, compile_only_devices("v5e", 8))
    assert compiled.arguments > 0 and compiled.outputs > 0 and compiled.flops > 0
    assert compiled.costs.matmul_flops > 0 and compiled.costs.unknown_loops == 0


def test_named_remat_trades_memory_for_recomputation_on_a_tpu_slice():
    _needs_libtpu()
    devices = compile_only_devices("v5e", 8)
    compiled, formula = {}, {}
    for remat in ("none", "save_qkv_proj", "full"):
        config = load_config("tiny", [f"model.remat={remat}", "mesh.fsdp=8", "model.num_layers=8",
                                      "model.scan_unroll=1", "train.batch_size=64",
                                      "train.loss_chunk=64"])
        compiled[remat] = compile_step_memory(config, devices).temporaries
        formula[remat] = plan_module.activation_bytes_per_device(config, mesh_shape(config.mesh, 8))
    # Keeping the q, k, v projections of 8 layers costs more than keeping only block inputs,
    # and less than keeping everything: in XLA's compiled figures (measured 29, 37 and 300 MiB
    # of temporaries) and in the formula.
    assert compiled["full"] < compiled["save_qkv_proj"] < compiled["none"], compiled
    assert formula["full"] < formula["save_qkv_proj"] < formula["none"], formula


def test_the_verdict_follows_xlas_figures_not_the_formula(monkeypatch):
    """With an HBM between the formula's estimate and XLA's figure, XLA decides."""
    _needs_libtpu()
    config = load_config("tiny", ["mesh.fsdp=8"])
    compiled = compile_step_memory(config, compile_only_devices("v5e", 8))
    monkeypatch.setattr(plan_module, "compile_step_memory", lambda *_: compiled)  # compiled once
    estimate = plan(config, "v5e-8", compile_step=False)
    estimated = float(re.search(r"total ~([\d.]+) GiB", estimate).group(1)) * 2**30
    low, high = sorted([estimated, compiled.total])
    assert high > 1.5 * low  # far enough apart for the test to mean something
    hbm = (low + high) / 2 / plan_module.USABLE_FRACTION
    monkeypatch.setitem(CHIPS, "v5e", dataclasses.replace(CHIPS["v5e"], hbm_bytes=hbm))
    by_formula = plan(config, "v5e-8", compile_step=False)
    by_xla = plan(config, "v5e-8")
    assert ("does NOT fit" in by_xla) == (compiled.total > estimated)
    assert ("does NOT fit" in by_formula) == (estimated > compiled.total)
    assert _compiled_percent(by_xla) == round(100 * compiled.total / hbm)
    mfu = float(re.search(r"MFU <= ([\d.]+)%", by_xla).group(1))  # the roofline, from XLA's step
    assert 0 < mfu <= 100 and "roofline" not in by_formula


def test_topologies_are_named_by_chips_and_multislice_compiles():
    _needs_libtpu()
    assert topology_name("v5p", 64) == "v5p:4x4x4" and topology_name("v5e", 256) == "v5e:16x16"
    with pytest.raises(UserError, match="come in"):
        topology_name("v5e", 12)
    report = plan(load_config("tiny", ["mesh.dcn_data=2", "mesh.data=2", "mesh.fsdp=4"]),
                  "v5e-4", num_slices=2)
    assert "compiled the step ahead of time for 8 TPU v5 lite" in report, report
