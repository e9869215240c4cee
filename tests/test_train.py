"""The pretraining loop: metrics, determinism, checkpoints, resume after SIGKILL, preemption,
resharding on restore, and skipped non-finite steps."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llm_jax import checkpoint
from llm_jax.config import load_config
from llm_jax.parallel.mesh import make_mesh
from llm_jax.train.build import build_training
from llm_jax.train.losses import cross_entropy_sums
from llm_jax.train.metrics import read_metrics
from llm_jax.train.optimizer import learning_rate_schedule, weight_decay_mask

ROOT = Path(__file__).resolve().parents[1]
MODEL = ["model.vocab_size=512", "model.d_model=64", "model.num_layers=2", "model.num_heads=4",
         "model.num_kv_heads=2", "model.mlp_dim=128", "model.max_seq_len=64", "data.seq_len=64",
         "train.batch_size=8", "optimizer.warmup_steps=2", "optimizer.lr=3e-3",
         "train.log_every=1", "eval.every=0", "eval.steps=2", "checkpoint.async_save=true"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small curated corpus and a 512-token tokenizer, shared by the runs below."""
    from llm_jax.data.curate import curate
    from llm_jax.data.tokenizer_training import train_from_config

    root = tmp_path_factory.mktemp("corpus")
    config = load_config("tiny", [f"run_dir={root}", "curate.max_documents=120",
                                  "curate.tasks=1", "tokenizer.vocab_size=512"])
    curate(config, progress=False)
    train_from_config(config, progress=False)
    return [f"data.curated_dir={root / 'curated'}",
            f"tokenizer.path={root / 'tokenizer' / 'tokenizer.model'}"]


def train_args(corpus, run_dir, *extra):
    return ["train", "--config", "tiny", "--no-progress", f"run_dir={run_dir}", *MODEL, *corpus,
            *extra]


def run_cli(args, devices=8, **kwargs):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, "-m", "llm_jax", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


STEPS = 120
RUN = [f"train.steps={STEPS}", "checkpoint.every=20", "checkpoint.keep=2"]


def losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir)}


@pytest.fixture(scope="module")
def reference_run(corpus, tmp_path_factory):
    """An uninterrupted run of STEPS steps."""
    run_dir = tmp_path_factory.mktemp("reference")
    process = run_cli(train_args(corpus, run_dir, *RUN))
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    return run_dir, output


def test_metrics_and_checkpoints_are_written(reference_run):
    run_dir, output = reference_run
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for key in ("loss", "lr", "grad_norm", "tokens_per_sec", "mfu"):
        assert all(np.isfinite(r[key]) for r in records), key
    assert "eval_loss" in records[-1] and "eval_bpb" in records[-1]
    assert records[-1]["loss"] < records[0]["loss"]
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    steps = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [STEPS - 20, STEPS]  # every 20 steps, the last 2 kept
    assert (run_dir / "config.yaml").exists() and (run_dir / "tokenizer" / "tokenizer.model").exists()
    assert f"finished at step {STEPS}" in output


def test_same_config_and_seed_give_bitwise_equal_losses(corpus, reference_run, tmp_path):
    process = run_cli(train_args(corpus, tmp_path, *RUN))
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    assert losses(tmp_path) == losses(reference_run[0])


def test_sigkill_then_restart_continues_exactly(corpus, reference_run, tmp_path):
    args = train_args(corpus, tmp_path, *RUN)
    process = run_cli(args)
    manager = checkpoint.checkpoint_manager(tmp_path)
    deadline = time.time() + 300
    while time.time() < deadline and (manager.reload() or manager.latest_step() or 0) < 40:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = max(losses(tmp_path))
    assert 40 <= killed_at < STEPS
    restarted = run_cli(args)
    output, _ = restarted.communicate(timeout=600)
    assert restarted.returncode == 0, output
    assert "resumed" in output
    reference = losses(reference_run[0])
    after = losses(tmp_path)
    assert sorted(after) == list(range(1, STEPS + 1))
    assert after == reference  # bitwise: same state, same batches after the restart


@pytest.mark.parametrize("mesh", [["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"],
                                  ["mesh.pipe=2", "mesh.data=4", "mesh.fsdp=1",
                                   "train.microbatches=2"]])
def test_train_command_on_8_devices_logs_the_single_device_losses(corpus, tmp_path, mesh):
    short = ["train.steps=6", "checkpoint.every=6"]
    single = run_cli(train_args(corpus, tmp_path / "one", *short, "mesh.fsdp=1",
                                *mesh[3:]), devices=1)
    sharded = run_cli(train_args(corpus, tmp_path / "eight", *short, *mesh))
    for process in (single, sharded):
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output
    one, eight = losses(tmp_path / "one"), losses(tmp_path / "eight")
    assert sorted(one) == sorted(eight) == list(range(1, 7))
    np.testing.assert_allclose([eight[s] for s in one], [one[s] for s in one], atol=1e-5)


def test_sigterm_saves_and_exits_cleanly(corpus, tmp_path):
    process = run_cli(train_args(corpus, tmp_path, "train.steps=1000", "checkpoint.every=1000"))
    deadline = time.time() + 300
    while time.time() < deadline and max(losses(tmp_path), default=0) < 3:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    assert "SIGTERM: saved step" in output
    saved = checkpoint.checkpoint_manager(tmp_path).latest_step()
    assert saved is not None and saved >= 3


def test_restore_onto_a_different_mesh_reshards(corpus, tmp_path):
    """Saved from fsdp=8, restored onto data=2 x fsdp=2 x tensor=2: same values, new layout."""
    config = load_config("tiny", [f"run_dir={tmp_path}", *MODEL, *corpus, "mesh.fsdp=8"])
    saved = build_training(config, make_mesh(config))
    manager = checkpoint.checkpoint_manager(tmp_path)
    checkpoint.save_train_state(manager, saved.state, {"any": 1}, seed=0)
    manager.wait_until_finished()
    other = load_config("tiny", [f"run_dir={tmp_path}", *MODEL, *corpus, "mesh.data=2",
                                 "mesh.fsdp=2", "mesh.tensor=2"])
    target = build_training(other, make_mesh(other), jax.random.key(99))
    state, data_state = checkpoint.restore_train_state(manager, 0, target.state, target.shardings)
    assert data_state == {"any": 1}
    up = state.params["layers"]["blocks"]["mlp"]["up"]
    assert up.sharding == target.state.params["layers"]["blocks"]["mlp"]["up"].sharding
    assert up.sharding != saved.state.params["layers"]["blocks"]["mlp"]["up"].sharding
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params),
                 jax.device_get(saved.state.params))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.opt_state),
                 jax.device_get(saved.state.opt_state))


def test_non_finite_gradients_skip_the_update():
    config = load_config("tiny", [*MODEL, "mesh.fsdp=1"])
    training = build_training(config, make_mesh(config, jax.devices()[:1]))
    params = jax.tree.map(lambda x: x, training.state.params)
    params["final_norm"]["scale"] = params["final_norm"]["scale"].at[0].set(jnp.nan)
    state = training.state.replace(params=params)
    rows, length = 8, 64
    batch = {"inputs": np.zeros((rows, length), np.int32), "targets": np.ones((rows, length), np.int32),
             "positions": np.tile(np.arange(length, dtype=np.int32), (rows, 1)),
             "segment_ids": np.ones((rows, length), np.int32),
             "loss_mask": np.ones((rows, length), np.float32)}
    before = jax.device_get(state)
    new_state, metrics = training.step(state, training.put_batch(batch))
    assert int(metrics["skipped"]) == 1 and int(new_state.bad_steps) == 1
    after = jax.device_get(new_state)
    assert int(after.step) == 1
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), after.params, before.params)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), after.opt_state,
                 before.opt_state)


def test_cross_entropy_and_z_loss_match_their_formulas():
    logits = jax.random.normal(jax.random.key(0), (2, 5, 11)) * 3
    targets = jax.random.randint(jax.random.key(1), (2, 5), 0, 11)
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], jnp.float32)
    nll, z = cross_entropy_sums(logits, targets, mask, z_loss=1e-4)
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    np.testing.assert_allclose(nll, jnp.sum(expected * mask), rtol=1e-6)
    log_z = jax.scipy.special.logsumexp(logits, axis=-1)
    np.testing.assert_allclose(z, 1e-4 * jnp.sum(log_z**2 * mask), rtol=1e-6)


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "constant"])
def test_learning_rate_schedules(schedule):
    config = load_config("tiny", ["optimizer.lr=1.0", "optimizer.warmup_steps=10",
                                  "optimizer.min_lr_ratio=0.1", f"optimizer.schedule={schedule}",
                                  "optimizer.decay_fraction=0.2"])
    lr = learning_rate_schedule(config.optimizer, 100)
    assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(0.5)
    assert float(lr(10)) == pytest.approx(1.0)
    end = {"cosine": 0.1, "wsd": 0.1, "constant": 1.0}[schedule]
    assert float(lr(100)) == pytest.approx(end, abs=1e-6)
    if schedule == "wsd":
        assert float(lr(79)) == pytest.approx(1.0) and float(lr(90)) == pytest.approx(0.55)
    if schedule == "cosine":
        assert float(lr(55)) == pytest.approx(0.1 + 0.9 * 0.5, abs=1e-6)


def test_weight_decay_skips_norms_and_embeddings_by_default():
    from llm_jax.model import abstract_params

    config = load_config("tiny", ["model.position=learned"])
    mask = weight_decay_mask(config.optimizer, abstract_params(config.model))
    assert mask["layers"]["blocks"]["mlp"]["up"] and mask["lm_head"]
    assert not mask["layers"]["blocks"]["attn_norm"]["scale"]
    assert not mask["final_norm"]["scale"]
    assert not mask["embed"]["embedding"] and not mask["pos_embed"]
    decayed = load_config("tiny", ["optimizer.decay_norms=true", "optimizer.decay_embeddings=true"])
    mask = weight_decay_mask(decayed.optimizer, abstract_params(decayed.model))
    assert mask["final_norm"]["scale"] and mask["embed"]["embedding"]
