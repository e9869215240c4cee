"""`llm-jax plan`: memory per device without allocating, and an ahead-of-time compile."""

import jax
import pytest

from llm_jax.cli import main
from llm_jax.config import ConfigError, load_config
from llm_jax.parallel.mesh import mesh_shape
from llm_jax.plan import parse_slice, plan, state_bytes_per_device


def test_fsdp_divides_state_bytes_by_the_mesh():
    config = load_config("llama3-8b", ["mesh.fsdp=-1"])
    sizes = mesh_shape(config.mesh, 64)
    params, opt, count = state_bytes_per_device(config, sizes)
    assert abs(count - 8.03e9) < 5e6
    assert params == pytest.approx(count * 4 / 64, rel=1e-3)
    assert opt == pytest.approx(2 * params, rel=1e-3)  # Adam's two moments


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
    assert "compiled the step ahead of time" in out and "fsdp=4 x tensor=2" in out


@pytest.mark.parametrize("preset, slice_name", [("llama3-8b-v5p-128", "v5p-128"),
                                                ("llama3-8b-v5e-256", "v5e-256"),
                                                ("llama3.2-1b-h100", "h100-1")])
def test_scale_out_presets_fit_their_slice(preset, slice_name):
    report = plan(load_config(preset), slice_name, compile_step=False)
    assert "; fits" in report, report
