"""Declarative experiments: a base preset, overrides per scale, a sweep of variants, seeds.

An experiment file in `experiments/` builds an `Experiment` and calls `main(experiment)`:

    python experiments/mlp_variants.py --scale tiny --out results/mlp_variants

Each variant is trained once per seed on what the experiment's runs share, made once in
`<out>/_data` (`llm_jax.experiment_data`: by default a curated corpus and its tokenizer), through
the same `train` loop as `llm-jax train` (so runs resume, and finished runs are skipped when the
command is repeated). The output folder gets `results.csv` (one row per run, every held-out
metric of its last step), `results.md` (the experiment's columns as mean and standard deviation
per variant, beside what the paper reported) and `loss_curves.png` (training curves, mean per
variant).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
from pathlib import Path
from typing import Callable, Sequence

import jax
import numpy as np

from llm_jax.config import Config, load_config
from llm_jax.experiment_data import CuratedCorpus, SharedData, train_unless_finished
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


def run_config(experiment: Experiment, scale: str, out: Path, variant: Variant, seed: int,
               extra: Sequence[str] = ()) -> Config:
    return load_config(experiment.base, [
        *experiment.scales[scale], *variant.overrides_for(scale), *extra,
        f"run_dir={out / variant.label / f'seed{seed}'}", f"seed={seed}",
        *experiment.shared.overrides(out / "_data"),
    ])


def train_one(config: Config) -> dict:
    """Trains (or resumes, or skips when finished) one run; returns its final numbers."""
    from llm_jax.model import abstract_params

    last = train_unless_finished(config)[-1]
    shapes = abstract_params(config.model)
    total = sum(x.size for x in jax.tree.leaves(shapes))
    return {**{k: v for k, v in last.items() if k.startswith("eval_")},
            "train_loss": last["loss"], "params": total,
            "non_embedding_params": sum(x.size for x in jax.tree.leaves(shapes["layers"])),
            "steps": last["step"]}


def _mean_std(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def write_results(experiment: Experiment, scale: str, out: Path, rows: list[dict]) -> Path:
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    per_variant = []
    headings = [heading for _, heading in experiment.columns]
    lines = [f"# {experiment.name} ({scale} scale)", "", experiment.question, "",
             f"Reference: {experiment.reference}", "", "Mean ± standard deviation over seeds.",
             "", f"| variant | params | {' | '.join(headings)} | seeds |",
             "|---|---|" + "---|" * len(headings) + "---|"]
    for variant in experiment.variants:
        runs = [r for r in rows if r["variant"] == variant.label]
        stats = {key: _mean_std([r.get(key, math.nan) for r in runs])
                 for key, _ in experiment.columns}
        per_variant.append({"variant": variant.label, "params": runs[0]["params"],
                            "non_embedding_params": runs[0]["non_embedding_params"],
                            **{key: mean for key, (mean, _) in stats.items()},
                            **{f"{key}_std": std for key, (_, std) in stats.items()}})
        cells = " | ".join(f"{mean:.4f} ± {std:.4f}" for mean, std in stats.values())
        lines.append(f"| {variant.label} | {runs[0]['params'] / 1e6:.2f}M | {cells} | "
                     f"{len(runs)} |")
    if experiment.summarize:
        lines += ["", *experiment.summarize(per_variant)]
    path = out / "results.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def plot_loss_curves(experiment: Experiment, scale: str, out: Path, seeds: Sequence[int]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = experiment.curves
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(7.0, 4.5 * len(metrics)), 4),
                             squeeze=False)
    runs = {v.label: [read_metrics(out / v.label / f"seed{s}") for s in seeds]
            for v in experiment.variants}
    for ax, metric in zip(axes[0], metrics):
        for label, curves in runs.items():
            steps = [r["step"] for r in curves[0]]
            length = min(len(c) for c in curves)
            mean = np.mean([[r[metric] for r in c[:length]] for c in curves], axis=0)
            ax.plot(steps[:length], mean, label=label)
        ax.set_xlabel("step")
        ax.set_ylabel(f"train {metric} (mean of {len(seeds)} seeds)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{experiment.name} ({scale})")
    fig.tight_layout()
    path = out / "loss_curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_experiment(experiment: Experiment, scale: str, out: Path, seeds: Sequence[int],
                   extra: Sequence[str] = ()) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    experiment.shared.prepare(experiment, scale, out / "_data", extra)
    key, heading = experiment.columns[0]
    rows = []
    for variant in experiment.variants:
        for seed in seeds:
            result = train_one(run_config(experiment, scale, out, variant, seed, extra))
            rows.append({"variant": variant.label, "seed": seed, **result})
            print(f"{experiment.name}: {variant.label} seed {seed}: {heading} "
                  f"{result.get(key, math.nan):.4f}", flush=True)
    write_results(experiment, scale, out, rows)
    plot_loss_curves(experiment, scale, out, seeds)
    return rows


def main(experiment: Experiment, argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=experiment.question)
    parser.add_argument("--scale", choices=sorted(experiment.scales), default="tiny",
                        help="tiny: minutes on a laptop CPU; full: the paper-sized run on a pod")
    parser.add_argument("--out", default=f"results/{experiment.name}")
    parser.add_argument("--seeds", type=int, default=3, help="runs per variant (seeds 0..n-1)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value applied to every run")
    args = parser.parse_args(argv)
    out = Path(args.out)
    run_experiment(experiment, args.scale, out, range(args.seeds), args.overrides)
    print((out / "results.md").read_text())
    print(f"table: {out / 'results.md'}, {out / 'results.csv'}; plot: {out / 'loss_curves.png'}")
