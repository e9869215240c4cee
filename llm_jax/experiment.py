"""Declarative experiments: a base preset, overrides per scale, a sweep of variants, seeds.

An experiment file in `experiments/` builds an `Experiment` and calls `main(experiment)`:

    python experiments/mlp_variants.py --scale tiny --out results/mlp_variants

Each variant is trained once per seed on what the experiment's runs share, made once in
`<out>/_data` (`llm_jax.experiment_data`: by default a curated corpus and its tokenizer), through
the same `train` loop as `llm-jax train` (so runs resume); a variant's seeds train together as
one ensemble, one compiled program (`llm_jax.train.ensemble`; `--separate`: one by one). Each
run's directory is named by a hash of its resolved config and the library code
(`run_version.py`), so repeating the command skips unchanged finished runs and retrains
changed ones; `run.json` beside its metrics records the hash, code version, commit and
training wall time. The output folder gets `results.csv` (one row per run, every held-out
metric of its last step), `results.md` (the experiment's columns as mean and 95% confidence
interval per variant, beside what the paper reported, then each variant against the first
one: Welch's test, a verdict at p < 0.01 and the seeds 80% power would need; see
`experiment_stats.py`) and `loss_curves.png` (training curves, mean per variant).
`--seeds auto` starts with 3 seeds and adds one to every variant until each verdict on the
first column is decided or `--max-seeds` is reached.
The variants are matched by parameters where their overrides size them so; `--match flops`
instead trains each arm for the steps that spend the first arm's training FLOPs (6N + attention
per token, active parameters of a mixture of experts), and the table shows each arm's steps
and training FLOPs either way. `--tune lr` first picks each arm's learning rate among 1/3, 1
and 3 times its own by one seed's result (`tune_learning_rates`), and the table says which.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import math
from typing import Callable, Sequence

import jax
import numpy as np

from llm_jax import storage
from llm_jax.config import Config, load_config
from llm_jax.experiment_data import CuratedCorpus, SharedData, finished, train_unless_finished
from llm_jax.experiment_stats import ALPHA, Comparison, compare, decided, interval
from llm_jax.run_version import code_version, config_hash, git_commit
from llm_jax.train.metrics import read_metrics


@dataclasses.dataclass(frozen=True)
class Variant:
    """One arm of the sweep: overrides for every scale, plus some for one scale only."""

    label: str
    overrides: tuple[str, ...]
    per_scale: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def overrides_for(self, scale: str) -> tuple[str, ...]:
        return self.overrides + self.per_scale.get(scale, ())


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    question: str
    reference: str  # the paper, and what it reported, for the results table
    base: str  # preset name
    scales: dict[str, tuple[str, ...]]  # e.g. {"tiny": CPU overrides, "full": TPU overrides}
    variants: tuple[Variant, ...]
    # Extra lines under the table (e.g. a fitted power law), from the per-variant results.
    summarize: Callable[[list[dict]], list[str]] | None = None
    shared: SharedData = CuratedCorpus()
    # The table's columns: (metric of a run's last step, heading).
    columns: tuple[tuple[str, str], ...] = (("eval_loss", "eval loss"),
                                            ("eval_bpb", "eval bits/byte"))
    curves: tuple[str, ...] = ("loss",)  # training metrics plotted against step
    # Which way is better for a column's metric: "lower" (the default), "higher" or "neither".
    better: dict[str, str] = dataclasses.field(default_factory=dict)


MATCHES = ("params", "flops")  # what the arms share: as the variants define them, or compute


def training_flops(config: Config) -> float:
    """Model FLOPs of the whole run: steps x tokens per step x FLOPs per token."""
    from llm_jax.train.flops import flops_per_token

    tokens = config.train.batch_size * config.data.seq_len
    return config.train.steps * tokens * flops_per_token(config.model, config.data.seq_len)


def run_config(experiment: Experiment, scale: str, out: storage.AnyPath, variant: Variant,
               seed: int, extra: Sequence[str] = (), match: str = "params") -> Config:
    """The run's resolved config; its run_dir is `<out>/<variant>/seed<N>-<config hash>`.
    `match="flops"` gives each arm the steps that spend the first arm's training FLOPs."""
    settings = [*experiment.scales[scale], *variant.overrides_for(scale), *extra,
                f"seed={seed}"]
    shared = experiment.shared.overrides(out / "_data", load_config(experiment.base, settings))
    config = load_config(experiment.base, [*settings, *shared])
    if match == "flops" and variant != experiment.variants[0]:
        budget = training_flops(run_config(experiment, scale, out, experiment.variants[0], seed,
                                           extra))
        steps = max(1, round(config.train.steps * budget / training_flops(config)))
        config = load_config(experiment.base, [*settings, *shared, f"train.steps={steps}"])
    run_dir = out / variant.label / f"seed{seed}-{config_hash(config)}"
    return dataclasses.replace(config, run_dir=str(run_dir))


RUN_RECORD = "run.json"  # in each run directory: what trained it, and how long it took


def train_one(config: Config) -> dict:
    """Trains (or resumes, or skips when finished) one run; returns its final numbers and
    its record (config hash, code version, commit, wall time of the training)."""
    import json
    import time

    from llm_jax.model import abstract_params
    from llm_jax.model.lora import unquantized

    record_path = storage.path(config.run_dir) / RUN_RECORD
    start = time.perf_counter()
    last = train_unless_finished(config)[-1]
    if not record_path.exists():  # first finished here: a resumed run's time is this part
        write_run_record(config, round(time.perf_counter() - start, 1))
    record = json.loads(record_path.read_text())
    shapes = abstract_params(unquantized(config.model))  # an nf4 matrix has all its weights
    total = sum(x.size for x in jax.tree.leaves(shapes))
    return {**{k: v for k, v in last.items() if k.startswith("eval_")},
            "train_loss": last["loss"], "params": total, "train_flops": training_flops(config),
            "non_embedding_params": sum(x.size for x in jax.tree.leaves(shapes["layers"])),
            "steps": last["step"], **{k: v for k, v in record.items() if k != "seed"},
            "run_dir": str(config.run_dir)}


def write_run_record(config: Config, wall_s: float, **extra) -> None:
    """`run.json`: what trained the run (config hash, code version, commit, seed) and how long
    its training took."""
    import json

    (storage.path(config.run_dir) / RUN_RECORD).write_text(json.dumps({
        "config_hash": config_hash(config), "code_version": code_version(),
        "commit": git_commit(), "seed": config.seed, "wall_s": wall_s, **extra},
        indent=1) + "\n")


def train_together(configs: Sequence[Config]) -> None:
    """Trains the unfinished runs among `configs` as one ensemble (`train/ensemble.py`: one
    compiled program) when `check_members` allows it (seed, init scale, optimizer numbers,
    DPO's beta), and records each one's share of the wall time; `train_one` then reads them
    as finished. Others are left to `train_one`, one by one."""
    import hashlib
    import time

    from llm_jax.errors import UserError
    from llm_jax.train.ensemble import check_members
    from llm_jax.train.ensemble_loop import train_ensemble
    from llm_jax.train.post_data import training_data

    pending = [c for c in configs if not finished(c)]
    if len(pending) < 2:
        return
    try:
        check_members(pending)
    except UserError:
        return
    names = "".join(sorted(config_hash(c) for c in pending)).encode()
    ensemble_dir = (storage.path(pending[0].run_dir).parent
                    / f"ensemble-{hashlib.sha256(names).hexdigest()[:12]}")
    start = time.perf_counter()
    train_ensemble(pending, [training_data(c) for c in pending], ensemble_dir)
    share = round((time.perf_counter() - start) / len(pending), 1)
    for config in pending:
        write_run_record(config, share, ensemble=len(pending), ensemble_dir=str(ensemble_dir))


def _comparisons(experiment: Experiment, rows: list[dict]) -> dict[tuple[str, str], Comparison]:
    """Every variant but the first against the first, for each column."""
    def values(label: str, key: str) -> list[float]:
        return [r.get(key, math.nan) for r in rows if r["variant"] == label]

    base = experiment.variants[0].label
    return {(variant.label, key): compare(values(variant.label, key), values(base, key),
                                          experiment.better.get(key, "lower"))
            for variant in experiment.variants[1:] for key, _ in experiment.columns}


def write_results(experiment: Experiment, scale: str, out: storage.AnyPath,
                  rows: list[dict], tuned: dict[str, float] | None = None) -> storage.AnyPath:
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    (out / "results.csv").write_text(table.getvalue())
    per_variant = []
    headings = [heading for _, heading in experiment.columns]
    lines = [f"# {experiment.name} ({scale} scale)", "", experiment.question, "",
             f"Reference: {experiment.reference}", "",
             "Mean ± half-width of the 95% confidence interval over seeds (Student's t).",
             "", f"| variant | params | steps | training FLOPs | {' | '.join(headings)} | "
             "seeds |", "|---|---|---|---|" + "---|" * len(headings) + "---|"]
    for variant in experiment.variants:
        runs = [r for r in rows if r["variant"] == variant.label]
        spans = {key: interval([r.get(key, math.nan) for r in runs])
                 for key, _ in experiment.columns}
        per_variant.append({"variant": variant.label, "params": runs[0]["params"],
                            "non_embedding_params": runs[0]["non_embedding_params"],
                            **{key: span.mean for key, span in spans.items()}})
        cells = " | ".join(f"{span.mean:.4f} ± {span.half_width:.4f}" for span in spans.values())
        lines.append(f"| {variant.label} | {runs[0]['params'] / 1e6:.2f}M | "
                     f"{runs[0]['steps']} | {float(runs[0]['train_flops']):.3g} | {cells} | "
                     f"{len(runs)} |")
    if tuned:
        factors = ", ".join(f"{f:.3g}" for f in LR_FACTORS)
        lines += ["", "Learning rates tuned per arm (`--tune lr`: one seed at "
                  f"{factors} x each arm's own, by the first column): "
                  + ", ".join(f"{label} {lr:g}" for label, lr in tuned.items()) + "."]
    base = experiment.variants[0].label
    lines += ["", f"Against {base}: Welch's t-test, a verdict at p < {ALPHA}, and the seeds per "
              "arm that 80% power would need at the observed effect.", "",
              "| variant | metric | difference | p | verdict | seeds for 80% power |",
              "|---|---|---|---|---|---|"]
    names = dict(experiment.columns)
    for (label, key), c in _comparisons(experiment, rows).items():
        needed = c.seeds_for_power if c.seeds_for_power is not None else "> 1000"
        lines.append(f"| {label} | {names[key]} | {c.difference:+.4f} | {c.p_value:.3g} | "
                     f"{c.verdict} | {needed} |")
    if experiment.summarize:
        lines += ["", *experiment.summarize(per_variant)]
    commits = sorted({str(r["commit"]) for r in rows})
    lines += ["", f"{len(rows)} runs, {sum(float(r['wall_s']) for r in rows) / 60:.1f} min of "
              "training in all; code version "
              f"{', '.join(sorted({r['code_version'] for r in rows}))}, commit "
              f"{', '.join(commits)}. Each run's directory is named by its config hash "
              "(`results.csv`: config_hash, wall_s, run_dir); repeating the command retrains "
              "only what changed."]
    path = out / "results.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def plot_loss_curves(experiment: Experiment, scale: str, out: storage.AnyPath,
                     rows: Sequence[dict]) -> storage.AnyPath:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = experiment.curves
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(7.0, 4.5 * len(metrics)), 4),
                             squeeze=False)
    runs = {v.label: [read_metrics(r["run_dir"]) for r in rows if r["variant"] == v.label]
            for v in experiment.variants}
    seeds = len(rows) // len(experiment.variants)
    for ax, metric in zip(axes[0], metrics):
        for label, curves in runs.items():
            steps = [r["step"] for r in curves[0]]
            length = min(len(c) for c in curves)
            mean = np.mean([[r[metric] for r in c[:length]] for c in curves], axis=0)
            ax.plot(steps[:length], mean, label=label)
        ax.set_xlabel("step")
        ax.set_ylabel(f"train {metric} (mean of {seeds} seeds)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{experiment.name} ({scale})")
    fig.tight_layout()
    path = out / "loss_curves.png"
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=120)
    plt.close(fig)
    path.write_bytes(image.getvalue())
    return path


AUTO_SEEDS = 3  # where `--seeds auto` starts
LR_FACTORS = (1 / 3, 1.0, 3.0)  # `--tune lr`: around each arm's own learning rate


def tune_learning_rates(experiment: Experiment, scale: str, out: storage.AnyPath,
                        extra: Sequence[str], match: str,
                        ensemble: bool = True) -> dict[str, float]:
    """Each arm's learning rate among `LR_FACTORS` x its own, by the first column of one run
    (seed 0) at each, the rates of an arm trained as one ensemble: an ablation at one shared
    learning rate often measures that rate."""
    key, _ = experiment.columns[0]
    sign = -1.0 if experiment.better.get(key, "lower") == "higher" else 1.0
    chosen = {}
    for variant in experiment.variants:
        base_lr = run_config(experiment, scale, out, variant, 0, extra, match).optimizer.lr
        rates = [float(f"{base_lr * factor:.3g}") for factor in LR_FACTORS]
        configs = [run_config(experiment, scale, out, variant, 0, (*extra, f"optimizer.lr={lr}"),
                              match) for lr in rates]
        if ensemble:
            train_together(configs)
        scores = {lr: sign * train_one(config).get(key, math.inf)
                  for lr, config in zip(rates, configs)}
        chosen[variant.label] = min(scores, key=lambda lr: (math.isnan(scores[lr]), scores[lr]))
        print(f"{experiment.name}: {variant.label}: lr {chosen[variant.label]:g} "
              f"(tried {', '.join(f'{lr:g}' for lr in scores)})", flush=True)
    return chosen


def run_experiment(experiment: Experiment, scale: str, out: storage.AnyPath,
                   seeds: Sequence[int] | str, extra: Sequence[str] = (), max_seeds: int = 10,
                   match: str = "params", tune_lr: bool = False,
                   ensemble: bool = True) -> list[dict]:
    """Trains every variant for each seed (`"auto"`: see the module docstring), at learning
    rates tuned per arm first when asked, then writes the table and the plot. With `ensemble`
    each variant's seeds train as one ensemble (`train_together`)."""
    out.mkdir(parents=True, exist_ok=True)
    experiment.shared.prepare(experiment, scale, out / "_data", extra)
    tuned = (tune_learning_rates(experiment, scale, out, extra, match, ensemble) if tune_lr
             else {})
    settings = {v.label: (*extra, *([f"optimizer.lr={tuned[v.label]}"] if tuned else []))
                for v in experiment.variants}
    key, heading = experiment.columns[0]
    count = AUTO_SEEDS if seeds == "auto" else None
    while True:
        chosen = range(count) if count is not None else seeds
        rows = []
        for variant in experiment.variants:
            configs = [run_config(experiment, scale, out, variant, seed, settings[variant.label],
                                  match) for seed in chosen]
            if ensemble:
                train_together(configs)
            for seed, config in zip(chosen, configs):
                result = train_one(config)
                rows.append({"variant": variant.label, "seed": seed, **result})
                print(f"{experiment.name}: {variant.label} seed {seed}: {heading} "
                      f"{result.get(key, math.nan):.4f}", flush=True)
        if count is None:
            break
        open_ = [label for (label, column), c in _comparisons(experiment, rows).items()
                 if column == key and not decided(c)]
        if not open_ or count >= max_seeds:
            print(f"--seeds auto: {count} seeds; undecided on {heading}: "
                  f"{', '.join(open_) or 'none'}", flush=True)
            break
        count += 1
    write_results(experiment, scale, out, rows, tuned)
    plot_loss_curves(experiment, scale, out, rows)
    return rows


def _seeds(text: str) -> int | str:
    if text == "auto":
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise argparse.ArgumentTypeError(f"--seeds {text!r}: a number of seeds >= 1, or auto")


def main(experiment: Experiment, argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=experiment.question)
    parser.add_argument("--scale", choices=sorted(experiment.scales), default="tiny",
                        help="tiny: minutes on a laptop CPU; full: the paper-sized run on a pod")
    parser.add_argument("--out", default=f"results/{experiment.name}")
    parser.add_argument("--seeds", type=_seeds, default=3,
                        help="runs per variant (seeds 0..n-1), or auto: add seeds until the "
                             "verdicts on the first column are decided")
    parser.add_argument("--max-seeds", type=int, default=10, help="the cap of --seeds auto")
    parser.add_argument("--match", choices=MATCHES, default="params",
                        help="params: the arms as the variants define them (sized to equal "
                             "parameters); flops: each arm trains the steps that spend the "
                             "first arm's training FLOPs")
    parser.add_argument("--tune", choices=("none", "lr"), default="none",
                        help="lr: pick each arm's learning rate among 1/3, 1 and 3 times its "
                             "own (one seed each) before the seeds run")
    parser.add_argument("--separate", action="store_true",
                        help="train every run on its own instead of each variant's seeds (and "
                             "--tune lr's rates) as one ensemble")
    parser.add_argument("overrides", nargs="*", help="key.sub=value applied to every run")
    args = parser.parse_args(argv)
    out = storage.path(args.out)
    seeds = args.seeds if args.seeds == "auto" else range(args.seeds)
    run_experiment(experiment, args.scale, out, seeds, args.overrides, args.max_seeds,
                   args.match, args.tune == "lr", not args.separate)
    print((out / "results.md").read_text())
    print(f"table: {out / 'results.md'}, {out / 'results.csv'}; plot: {out / 'loss_curves.png'}")
