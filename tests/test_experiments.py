"""Each experiment runs end to end at a smoke scale and writes its table and plot."""

import csv
import importlib.util
import math
from pathlib import Path

import pytest

from llm_jax.run_version import code_version, git_commit

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["train.steps=3", "train.log_every=1", "eval.steps=1", "curate.max_documents=60",
         "curate.prose_steps=pii",
         "curate.tasks=1", "tokenizer.vocab_size=512", "model.vocab_size=512"]


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EXPERIMENT


def test_norms_experiment_writes_table_csv_and_plot(tmp_path, capsys):
    from llm_jax.experiment import main

    main(load("norms"), ["--seeds", "2", "--out", str(tmp_path), *SMOKE])
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [(r["variant"], r["seed"]) for r in rows] == [
        ("rmsnorm", "0"), ("rmsnorm", "1"), ("layernorm", "0"), ("layernorm", "1")]
    assert len({r["eval_loss"] for r in rows}) == 4  # seeds and variants differ
    # each variant's two seeds trained as one ensemble, each in its own run directory
    assert {r["ensemble"] for r in rows} == {"2"}
    assert len({r["ensemble_dir"] for r in rows}) == 2
    table = (tmp_path / "results.md").read_text()
    assert "| rmsnorm |" in table and "| layernorm |" in table and "±" in table
    assert "| steps | training FLOPs |" in table
    assert (tmp_path / "loss_curves.png").stat().st_size > 1000
    # Each run is versioned: its directory is named by its config hash, and its record says
    # which code and commit trained it and for how long.
    for row in rows:
        assert Path(row["run_dir"]).name == f"seed{row['seed']}-{row['config_hash']}"
        assert len(row["config_hash"]) == 12 and float(row["wall_s"]) > 0
    assert {r["code_version"] for r in rows} == {code_version()}
    assert {r["commit"] for r in rows} == {git_commit()} and "code version" in table
    # A repeated command finds every run finished and retrains nothing.
    first = Path(rows[0]["run_dir"])
    before = (first / "metrics.jsonl").read_text(), (first / "run.json").read_text()
    main(load("norms"), ["--seeds", "2", "--out", str(tmp_path), *SMOKE])
    assert ((first / "metrics.jsonl").read_text(), (first / "run.json").read_text()) == before
    assert list(csv.DictReader((tmp_path / "results.csv").open())) == rows


def test_a_changed_setting_or_seed_gets_its_own_run_directory():
    from llm_jax.experiment import run_config

    experiment = load("norms")
    variant = experiment.variants[0]
    same = [run_config(experiment, "tiny", Path("/tmp/x"), variant, 0) for _ in range(2)]
    assert same[0].run_dir == same[1].run_dir and same[0].run_dir.startswith("/tmp/x/rmsnorm/")
    other_seed = run_config(experiment, "tiny", Path("/tmp/x"), variant, 1)
    longer = run_config(experiment, "tiny", Path("/tmp/x"), variant, 0, ["train.steps=7"])
    assert len({same[0].run_dir, other_seed.run_dir, longer.run_dir}) == 3


def test_qk_norm_experiment_file_runs_end_to_end(tmp_path):
    """The README's example of a new experiment: one short file, both arms trained and
    compared, the switch reaching the model."""
    from llm_jax.checkpoint import load_run_config
    from llm_jax.experiment import main
    from llm_jax.train.metrics import read_metrics

    main(load("qk_norm"), ["--seeds", "1", "--out", str(tmp_path), *SMOKE])
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [r["variant"] for r in rows] == ["no-qk-norm", "qk-norm"]
    assert all(math.isfinite(float(r["eval_loss"])) for r in rows)
    assert int(rows[1]["params"]) > int(rows[0]["params"])  # the per-head norm scales
    assert "| qk-norm | eval loss |" in (tmp_path / "results.md").read_text()
    configs = [load_run_config(row["run_dir"]) for row in rows]
    assert [c.model.qk_norm for c in configs] == [False, True]
    assert {c.optimizer.lr for c in configs} == {1e-2}
    last = read_metrics(rows[0]["run_dir"])[-1]  # train.instrument: what the plot shows
    assert 0 < last["attn_entropy/layer1"] and 0 < last["update_ratio"] < 1
    assert (tmp_path / "loss_curves.png").stat().st_size > 1000


def test_moe_experiment_compares_equal_active_parameters(tmp_path):
    from llm_jax.checkpoint import load_run_config
    from llm_jax.experiment import main
    from llm_jax.train.metrics import read_metrics
    from llm_jax.train.flops import flops_per_token

    main(load("moe"), ["--seeds", "1", "--out", str(tmp_path), *SMOKE])
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [r["variant"] for r in rows] == ["dense", "moe-4x-top1", "moe-8x-top2"]
    assert all(math.isfinite(float(r["eval_loss"])) for r in rows)
    models = [load_run_config(r["run_dir"]).model for r in rows]
    active = [m.mlp_dim * max(m.moe.top_k if m.moe.experts else 1, 1) for m in models]
    assert len(set(active)) == 1  # the same SwiGLU width per token
    assert int(rows[1]["params"]) > int(rows[0]["params"])  # 4x the MLP parameters
    dense_flops = flops_per_token(models[0], 128)  # about equal: the router's matmul aside
    assert all(flops_per_token(m, 128) == pytest.approx(dense_flops, rel=0.01) for m in models)
    assert read_metrics(rows[1]["run_dir"])[-1]["router_loss"] > 0


def test_dpo_beta_sweep_writes_one_finite_row_per_beta_and_plots(tmp_path):
    from llm_jax.experiment import main
    from llm_jax.train.metrics import read_metrics

    experiment = load("dpo_beta")
    main(experiment, ["--seeds", "1", "--out", str(tmp_path), "train.steps=3",
                      "train.log_every=1", "eval.steps=1"])
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    labels = [v.label for v in experiment.variants]
    assert [r["variant"] for r in rows] == labels and len(set(labels)) >= 3
    for row in rows:
        beta = float(row["variant"].removeprefix("beta="))
        values = {key: float(row[key]) for key, _ in experiment.columns}
        assert all(math.isfinite(v) for v in values.values()), row
        # the rewards are beta times the log-ratios: each run trained with its own beta
        assert values["eval_rewards_margins"] == pytest.approx(beta * (
            values["eval_logratio_chosen"] - values["eval_logratio_rejected"]), rel=1e-2)
        first = read_metrics(row["run_dir"])[0]
        assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)  # starts as its reference
    table = (tmp_path / "results.md").read_text()
    assert all(f"| {label} |" in table for label in labels) and "±" in table
    assert (tmp_path / "loss_curves.png").stat().st_size > 1000


def test_lora_rank_sweep_starts_every_arm_from_one_checkpoint(tmp_path):
    from llm_jax.experiment import main
    from llm_jax.train.metrics import read_metrics

    experiment = load("lora_rank")
    main(experiment, ["--seeds", "1", "--out", str(tmp_path), "train.steps=3",
                      "train.log_every=1", "eval.steps=1"])
    rows = {r["variant"]: r for r in csv.DictReader((tmp_path / "results.csv").open())}
    assert list(rows) == [v.label for v in experiment.variants]
    assert all(math.isfinite(float(r["eval_loss"])) for r in rows.values())
    first = {label: read_metrics(r["run_dir"])[0]["loss"] for label, r in rows.items()}
    # B = 0: every adapted arm starts as the checkpoint, as full fine-tuning does
    assert all(first[label] == pytest.approx(first["full"], abs=1e-5)
               for label in ("r=1", "r=4", "r=16", "r=64"))
    assert first["r=16-nf4"] == pytest.approx(first["full"], abs=0.05)  # a 4-bit base
    assert "| r=16-nf4 |" in (tmp_path / "results.md").read_text()


def test_dpo_beta_runs_share_one_sft_start_and_differ_only_in_beta():
    from llm_jax.experiment import run_config

    experiment = load("dpo_beta")
    for scale in ("tiny", "full"):
        configs = [run_config(experiment, scale, Path("/tmp/x"), v, 0) for v in experiment.variants]
        assert {c.train.init_from for c in configs} == {"/tmp/x/_data/sft"}
        assert len({c.model for c in configs}) == 1 and len({c.dpo.beta for c in configs}) == len(
            configs)
        assert all(c.train.objective == "dpo" for c in configs)


@pytest.mark.parametrize("name", ["mlp_variants", "positions", "norms", "scaling", "qk_norm",
                                  "lora_rank", "moe", "learning_rate"])
def test_experiments_define_distinct_variants_for_both_scales(name):
    from llm_jax.experiment import run_config

    experiment = load(name)
    assert {"tiny", "full"} <= set(experiment.scales)
    for scale in ("tiny", "full"):
        configs = [run_config(experiment, scale, Path("/tmp/x"), v, 0) for v in experiment.variants]
        arms = {(c.model, c.optimizer) for c in configs}
        assert len(arms) == len(experiment.variants), f"{name} {scale}: variants coincide"


def test_match_flops_gives_every_arm_the_first_arms_training_flops():
    from llm_jax.experiment import run_config, training_flops

    experiment = load("scaling")  # four widths: more FLOPs per token each
    configs = [run_config(experiment, "tiny", Path("/tmp/x"), v, 0, match="flops")
               for v in experiment.variants]
    steps = [c.train.steps for c in configs]
    assert steps[0] == 200 and steps == sorted(steps, reverse=True) and len(set(steps)) == 4
    budget = training_flops(configs[0])
    assert all(training_flops(c) == pytest.approx(budget, rel=0.01) for c in configs)
    same = [run_config(experiment, "tiny", Path("/tmp/x"), v, 0) for v in experiment.variants]
    assert {c.train.steps for c in same} == {200}  # matched by the variants' own settings


def test_scaling_fit_recovers_a_known_exponent():
    import importlib.util as util

    spec = util.spec_from_file_location("scaling", ROOT / "experiments" / "scaling.py")
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = [{"non_embedding_params": n, "eval_loss": 5.0 * n ** -0.08}
               for n in (1e5, 3e5, 1e6, 3e6)]
    [line] = module.fit_power_law(results)
    assert "N^(-0.0800)" in line and "R² = 1.000" in line


def test_full_scale_runs_read_the_shared_prepared_corpus_and_tiny_runs_their_own():
    from llm_jax.data.corpus import corpus_name, curated_dir
    from llm_jax.data.tokenizer_training import default_model_path
    from llm_jax.experiment import run_config

    experiment = load("positions")
    variant = experiment.variants[0]
    full = run_config(experiment, "full", Path("/tmp/x"), variant, 0,
                      ["data.corpora=/shared/corpora"])
    assert str(curated_dir(full)) == f"/shared/corpora/{corpus_name(full)}"
    assert str(default_model_path(full)).startswith(str(curated_dir(full)) + "/tokenizer-")
    tiny = run_config(experiment, "tiny", Path("/tmp/x"), variant, 0)
    assert tiny.data.curated_dir == "/tmp/x/_data/curated"
