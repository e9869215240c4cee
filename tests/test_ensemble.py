"""Ensembles: K members in one compiled program compute what K single runs compute."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from llm_jax.config import load_config
from llm_jax.errors import UserError
from llm_jax.parallel.mesh import make_mesh
from llm_jax.train.build import build_training
from llm_jax.train.ensemble import build_ensemble, check_members
from llm_jax.train.synthetic import synthetic_batch
from test_dpo import preference_batch

SMALL = ["model.vocab_size=512", "model.d_model=64", "model.num_layers=2", "model.num_heads=4",
         "model.num_kv_heads=2", "model.mlp_dim=128", "model.max_seq_len=32", "data.seq_len=32",
         "train.batch_size=8", "train.steps=6", "train.log_every=1", "optimizer.warmup_steps=2",
         "eval.steps=2", "checkpoint.every=3"]
# Members differ in seed and in every optimizer number an ensemble lets them differ in.
MEMBERS = [("seed=0", "optimizer.lr=3e-3"),
           ("seed=1", "optimizer.lr=1e-3", "optimizer.weight_decay=0.0", "optimizer.b2=0.99"),
           ("seed=2", "optimizer.lr=1e-2", "optimizer.warmup_steps=4", "optimizer.b1=0.8"),
           ("seed=3", "optimizer.schedule=constant", "optimizer.eps=1e-6")]


def member_configs(root, extra=(), members=MEMBERS):
    return [load_config("tiny", [*SMALL, *extra, *member, f"run_dir={root}/m{k}"])
            for k, member in enumerate(members)]


def member_batches(members: int, steps: int):
    return [[synthetic_batch(8, 32, 512, seed=100 * k + t) for t in range(steps)]
            for k in range(members)]


def stacked(batches, t):
    return {name: np.stack([b[t][name] for b in batches]) for name in batches[0][0]}


def run_ensemble(configs, batches, steps, devices=None):
    training = build_ensemble(configs, devices=devices)
    state, curves = training.state, []
    for t in range(steps):
        state, metrics = training.step(
            state, jax.device_put(stacked(batches, t), training.batch_sharding))
        curves.append({k: np.asarray(v) for k, v in metrics.items()})
    return training, state, curves


def assert_equals_single_runs(configs, batches, curves, names, atol=1e-7):
    """Trains each member alone on its batches; its metrics per step equal the ensemble's.
    Returns each single run's (training, final state)."""
    runs = []
    for k, config in enumerate(configs):
        config = dataclasses.replace(config, mesh=configs[0].mesh)
        single = build_training(config, make_mesh(config, jax.devices()[:1]))
        own = single.state
        for t, batch in enumerate(batches[k]):
            own, metrics = single.step(own, single.put_batch(batch))
            for name in names:
                np.testing.assert_allclose(curves[t][name][k], metrics[name], rtol=2e-5,
                                           atol=atol, err_msg=f"member {k} {name} step {t}")
        runs.append((single, own))
    return runs


def test_each_member_computes_what_its_own_run_computes(tmp_path):
    configs = member_configs(tmp_path)
    batches = member_batches(len(configs), 5)
    _, state, curves = run_ensemble(configs, batches, 5, jax.devices()[:1])
    runs = assert_equals_single_runs(configs, batches, curves, ("loss", "grad_norm", "lr"))
    for k, (_, own) in enumerate(runs):
        for ours, theirs in zip(jax.tree.leaves(state.params), jax.tree.leaves(own.params)):
            np.testing.assert_allclose(np.asarray(ours[k]), theirs, rtol=1e-4, atol=2e-6)
    # the members really differ: seeds, schedules and decay move them apart
    assert len({float(curves[-1]["loss"][k]) for k in range(4)}) == 4

def test_members_split_over_the_data_axis_equal_one_device(tmp_path):
    """4 members on data=2 x fsdp=2 x tensor=2: each device holds half the members."""
    configs = member_configs(tmp_path, ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"])
    batches = member_batches(4, 3)
    training, state, sharded = run_ensemble(configs, batches, 3)
    embed = state.params["embed"]["embedding"]
    assert embed.sharding.spec[0] == "data"
    assert embed.addressable_shards[0].data.shape[0] == 2
    one = [dataclasses.replace(c, mesh=load_config("tiny", SMALL).mesh) for c in configs]
    _, _, alone = run_ensemble(one, batches, 3, jax.devices()[:1])
    for ours, theirs in zip(sharded, alone):
        np.testing.assert_allclose(ours["loss"], theirs["loss"], rtol=2e-5)
        np.testing.assert_allclose(ours["grad_norm"], theirs["grad_norm"], rtol=1e-4)


class EvalOnly:
    def __init__(self, batches):
        self.batches = batches

    def eval_iterator(self):
        return iter(self.batches)


def test_dpo_members_with_their_own_beta_equal_their_runs(tmp_path):
    """DPO's beta is traced per member (at the first step policy == reference, so beta alone
    scales each member's gradient); each member keeps its own frozen reference and is
    evaluated by the objective, as `PreferenceData.evaluate` evaluates a single run."""
    from llm_jax.train.ensemble_loop import _evaluate
    from llm_jax.train.objective_eval import make_objective_eval

    members = [("seed=0", "dpo.beta=0.1", "optimizer.lr=3e-3"),
               ("seed=1", "dpo.beta=0.5", "optimizer.lr=1e-3")]
    configs = member_configs(tmp_path, ["train.objective=dpo"], members)
    batches = [[preference_batch(configs[0], 8, 10 * k + t) for t in range(3)]
               for k in range(2)]
    training, state, curves = run_ensemble(configs, batches, 3, jax.devices()[:1])
    held_out = [[preference_batch(configs[0], 8, 100 + k)] for k in range(2)]
    evals = _evaluate(training, state, [EvalOnly(b) for b in held_out])
    runs = assert_equals_single_runs(configs, batches, curves,
                                     ("loss", "grad_norm", "rewards_margins"), atol=1e-5)
    for k, (single, own) in enumerate(runs):
        expected = make_objective_eval(single)(own, iter(held_out[k]), 1)
        assert set(evals[k]) == set(expected) and "eval_rewards_accuracies" in expected
        for name, value in expected.items():
            assert evals[k][name] == pytest.approx(value, rel=1e-4, abs=1e-4), name


def test_members_keep_their_init_scale_and_their_own_fresh_adapters(tmp_path):
    """`model.init_std` may differ; from a checkpoint (`train.init_from`), each member's LoRA
    adapters start from its own seed, as its single run's do."""
    from llm_jax import checkpoint
    from llm_jax.train.init_from import initialize_from

    scales = member_configs(tmp_path, members=[("seed=0", "model.init_std=0.02"),
                                               ("seed=1", "model.init_std=0.1")])
    source = build_training(scales[0], make_mesh(scales[0], jax.devices()[:1]))
    checkpoint.save_params(tmp_path / "base", scales[0], source.state.params)
    lora = member_configs(tmp_path, ["model.lora.rank=4", f"train.init_from={tmp_path}/base"],
                          [("seed=0",), ("seed=1",)])
    for configs in (scales, lora):
        ensemble = build_ensemble(configs, devices=jax.devices()[:1])
        for k, config in enumerate(configs):
            single = build_training(config, make_mesh(config, jax.devices()[:1]))
            own = single.state
            if config.train.init_from:
                own = initialize_from(config, own, single.shardings)
            for ours, theirs in zip(jax.tree.leaves(ensemble.state.params),
                                    jax.tree.leaves(own.params)):
                np.testing.assert_array_equal(np.asarray(ours[k]), np.asarray(theirs))
        stacked = jax.tree.leaves(ensemble.state.params)
        assert any(not np.array_equal(x[0], x[1]) for x in stacked)  # members differ


def test_members_that_differ_in_shape_or_objective_are_refused(tmp_path):
    wider = member_configs(tmp_path, members=[("seed=0",), ("seed=1", "model.d_model=128")])
    with pytest.raises(UserError, match="differ in model.d_model"):
        check_members(wider)
    same_dir = [load_config("tiny", [*SMALL, f"seed={s}", f"run_dir={tmp_path}"]) for s in (0, 1)]
    with pytest.raises(UserError, match="distinct run_dir"):
        check_members(same_dir)
    ppo = member_configs(tmp_path, ["train.objective=ppo", "ppo.max_new_tokens=8"],
                         [("seed=0",), ("seed=1",)])
    with pytest.raises(UserError, match="cannot train as an ensemble"):
        check_members(ppo)
    precomputed = member_configs(tmp_path, ["train.objective=dpo", "dpo.reference=precomputed"],
                                 [("seed=0",), ("seed=1",)])
    with pytest.raises(UserError, match="precomputed cannot train as an ensemble"):
        check_members(precomputed)
    three = member_configs(tmp_path, ["mesh.data=2", "mesh.fsdp=4"], MEMBERS[:3])
    with pytest.raises(UserError, match="3 ensemble members cannot split over mesh.data=2"):
        build_ensemble(three)


class CountingData:
    """A member's data: numbered synthetic batches whose position a checkpoint stores. With
    `stop_after`, the iterator fails after that many batches, as a killed run would."""

    token_bytes = None
    tokenizer = None

    def __init__(self, seed: int, stop_after: int | None = None):
        self.seed, self.stop_after = seed, stop_after

    def train_iterator(self):
        return CountingIterator(self.seed, self.stop_after)

    def eval_iterator(self):
        return iter([synthetic_batch(8, 32, 512, seed=999 + t) for t in range(2)])


class CountingIterator:
    def __init__(self, seed: int, stop_after: int | None):
        self.seed, self.stop_after, self.index = seed, stop_after, 0

    def __next__(self):
        if self.stop_after is not None and self.index >= self.stop_after:
            raise RuntimeError("killed")
        self.index += 1
        return synthetic_batch(8, 32, 512, seed=1000 * self.seed + self.index)

    def get_state(self):
        return {"index": self.index}

    def set_state(self, state):
        self.index = state["index"]


def test_an_interrupted_ensemble_resumes_to_the_uninterrupted_result(tmp_path):
    from llm_jax import checkpoint
    from llm_jax.train.ensemble_loop import train_ensemble
    from llm_jax.train.metrics import read_metrics

    whole = member_configs(tmp_path / "whole", members=MEMBERS[:2])
    train_ensemble(whole, [CountingData(k) for k in range(2)], tmp_path / "whole" / "ensemble")
    parts = member_configs(tmp_path / "parts", members=MEMBERS[:2])
    with pytest.raises(RuntimeError, match="killed"):  # dies at step 5, saved at step 3
        train_ensemble(parts, [CountingData(k, stop_after=4) for k in range(2)],
                       tmp_path / "parts" / "ensemble")
    records = train_ensemble(parts, [CountingData(k) for k in range(2)],
                             tmp_path / "parts" / "ensemble")
    for k in range(2):
        expected, got = read_metrics(whole[k].run_dir), read_metrics(parts[k].run_dir)
        assert [r["step"] for r in got] == list(range(1, 7))
        for a, b in zip(expected, got):
            np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)
        assert got[-1]["eval_loss"] == pytest.approx(expected[-1]["eval_loss"], rel=1e-6)
        assert records[k]["eval_loss"] == got[-1]["eval_loss"]
        # each member's run directory is a checkpoint of its own model
        config, params = checkpoint.restore_params(parts[k].run_dir)
        assert config.seed == k and config.optimizer.lr == parts[k].optimizer.lr
        _, uninterrupted = checkpoint.restore_params(whole[k].run_dir)
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(uninterrupted)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    other = member_configs(tmp_path / "parts", members=[("seed=5",), ("seed=6",)])
    with pytest.raises(UserError, match="holds an ensemble of other members"):
        train_ensemble(other, [CountingData(k) for k in range(2)],
                       tmp_path / "parts" / "ensemble")
    assert json.loads((tmp_path / "parts" / "ensemble" / "members.json").read_text())[0][
        "run_dir"] == str(parts[0].run_dir)
