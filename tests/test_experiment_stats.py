"""The experiments' statistics against published figures, the table they write, and
`--seeds auto` adding seeds until a verdict is decided."""

import dataclasses
import math

import pytest

import llm_jax.experiment as experiment_module
from llm_jax.experiment import Experiment, Variant, run_experiment
from llm_jax.experiment_stats import compare, interval, seeds_for_power


def test_confidence_interval_is_students_t():
    # 1..5: mean 3, standard error 0.7071, t(0.975, 4 df) = 2.7764 -> half-width 1.9632
    span = interval([1, 2, 3, 4, 5])
    assert span.mean == 3 and span.half_width == pytest.approx(1.9632, abs=1e-4)
    assert math.isnan(interval([4.0]).half_width)


@pytest.mark.parametrize("effect, seeds", [(0.2, 394), (0.5, 64), (0.8, 26)])
def test_seeds_for_power_match_cohens_table(effect, seeds):
    # Cohen (1988), two-sample t-test, two-sided alpha 0.05, power 0.8 (as G*Power computes it)
    assert seeds_for_power(effect, alpha=0.05) == seeds


def test_welch_verdicts_follow_direction_and_significance():
    base = [4.00, 4.02, 3.98, 4.01]
    lower = [3.80, 3.82, 3.79, 3.81]
    assert compare(lower, base).verdict == "better" and compare(lower, base).p_value < 1e-4
    assert compare(lower, base, better="higher").verdict == "worse"
    assert compare(lower, base, better="neither").verdict == "lower"
    noisy = compare([4.01, 3.99, 4.03, 3.97], base)
    assert noisy.verdict == "not distinguishable" and noisy.p_value > 0.5
    assert compare([3.0], base).verdict == "not distinguishable"  # one seed cannot decide
    assert compare(lower, base).seeds_for_power == 3  # 13 pooled SDs; 2 seeds: t > 9.9 at 2 df


class _NoData:
    def prepare(self, *args) -> None:
        pass

    def overrides(self, data_dir, config) -> tuple[str, ...]:
        return ()


EXPERIMENT = Experiment(
    name="toy", question="Does b beat a?", reference="none", base="tiny",
    scales={"tiny": ()}, variants=(Variant("a", ()), Variant("b", ())), shared=_NoData(),
    columns=(("eval_loss", "eval loss"), ("eval_accuracy", "accuracy")),
    better={"eval_accuracy": "higher"})


def _fake_training(monkeypatch, effect):
    """Runs that take no training: eval loss 4.0 (a) or 4.0 - effect (b), with seed noise."""
    noise = [0.03, -0.02, 0.01, -0.03, 0.02, -0.01, 0.0, 0.025, -0.015, 0.005]

    def train_one(config):
        label, seed = config.run_dir.split("/")[-2], config.seed
        loss = 4.0 - (effect if label == "b" else 0.0) + noise[seed]
        return {"eval_loss": loss, "eval_accuracy": 1 - loss / 10, "train_loss": loss,
                "params": 10**6, "non_embedding_params": 10**5, "steps": 1, "train_flops": 1e9,
                "config_hash": "0" * 12, "code_version": "1" * 12, "commit": "c", "wall_s": 1.0,
                "run_dir": config.run_dir}

    monkeypatch.setattr(experiment_module, "train_one", train_one)
    monkeypatch.setattr(experiment_module, "train_together", lambda configs: None)
    monkeypatch.setattr(experiment_module, "plot_loss_curves", lambda *a: None)


def test_table_gives_intervals_and_verdicts(monkeypatch, tmp_path):
    _fake_training(monkeypatch, effect=0.2)
    run_experiment(EXPERIMENT, "tiny", tmp_path, range(3))
    table = (tmp_path / "results.md").read_text()
    # t(.975, 2) = 4.3
    assert "| a | 1.00M | 1 | 1e+09 | 4.0067 ± 0.0625 | 0.5993 ± 0.0063 | 3 |" in table
    assert "95% confidence interval" in table
    assert "| b | eval loss | -0.2000 | 0.000624 | better | 3 |" in table
    assert "| b | accuracy | +0.0200 |" in table  # higher accuracy is better here too
    assert table.count("| better |") == 2


@pytest.mark.parametrize("effect, seeds", [(0.2, 3), (0.0, 5)])
def test_auto_seeds_add_runs_until_decided_or_capped(monkeypatch, tmp_path, capsys, effect, seeds):
    _fake_training(monkeypatch, effect)
    rows = run_experiment(EXPERIMENT, "tiny", tmp_path, "auto", max_seeds=5)
    assert sorted({r["seed"] for r in rows}) == list(range(seeds))
    undecided = "none" if effect else "b"
    assert f"--seeds auto: {seeds} seeds; undecided on eval loss: {undecided}" in capsys.readouterr().out


def test_bad_seed_count_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        experiment_module.main(dataclasses.replace(EXPERIMENT), ["--seeds", "0"])
    assert "--seeds '0': a number of seeds >= 1, or auto" in capsys.readouterr().err


def test_tune_lr_picks_each_arms_best_learning_rate(monkeypatch, tmp_path):
    """Arm a does best at 3x the preset's learning rate, b at 1/3 of it; the seeds then train
    at those rates, and the table says so."""
    base_lr = experiment_module.load_config("tiny").optimizer.lr
    best = {"a": 3 * base_lr, "b": base_lr / 3}
    trained = []

    def train_one(config):
        label = config.run_dir.split("/")[-2]
        trained.append((label, config.seed, config.optimizer.lr))
        loss = 4.0 + abs(math.log(config.optimizer.lr / best[label])) + 0.01 * config.seed
        return {"eval_loss": loss, "eval_accuracy": 1 - loss / 10, "train_loss": loss,
                "params": 10**6,
                "non_embedding_params": 10**5, "steps": 1, "train_flops": 1e9,
                "config_hash": "0" * 12, "code_version": "1" * 12, "commit": "c",
                "wall_s": 1.0, "run_dir": config.run_dir}

    monkeypatch.setattr(experiment_module, "train_one", train_one)
    monkeypatch.setattr(experiment_module, "train_together", lambda configs: None)
    monkeypatch.setattr(experiment_module, "plot_loss_curves", lambda *a: None)
    run_experiment(EXPERIMENT, "tiny", tmp_path, range(2), tune_lr=True)
    tuning, seeded = trained[:6], trained[6:]
    assert sorted({lr for label, _, lr in tuning if label == "a"}) == pytest.approx(
        [base_lr / 3, base_lr, 3 * base_lr], rel=1e-2)
    for label, _, lr in seeded:
        assert lr == pytest.approx(best[label], rel=1e-2)
    table = (tmp_path / "results.md").read_text()
    assert f"a {float(f'{3 * base_lr:.3g}'):g}, b {float(f'{base_lr / 3:.3g}'):g}." in table
