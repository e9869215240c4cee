"""Statistics for an experiment's table: is a variant's difference from the baseline real?

Per variant and metric, the mean over seeds and a 95% confidence interval (Student's t). Per
variant against the baseline arm (the experiment's first variant): Welch's t-test (unequal
variances; scipy), a verdict at p < 0.01, and how many seeds per arm a two-sided t-test at
that level would need for 80% power at the observed effect (Cohen's d over the pooled
standard deviation, exact power from the noncentral t distribution).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from scipy import stats

ALPHA = 0.01  # a difference is called when p < ALPHA
POWER = 0.8
MAX_SEEDS_REPORTED = 1000  # beyond this the effect is, for an ablation, nothing


@dataclasses.dataclass(frozen=True)
class Interval:
    mean: float
    half_width: float  # of the 95% confidence interval; nan with fewer than 2 seeds
    seeds: int


@dataclasses.dataclass(frozen=True)
class Comparison:
    difference: float  # variant mean minus baseline mean
    p_value: float  # Welch's two-sided test; nan with fewer than 2 seeds in an arm
    verdict: str  # better | worse (or higher | lower) | not distinguishable
    seeds_for_power: int | None  # per arm; None when the observed effect is zero or tiny


def interval(values: Sequence[float]) -> Interval:
    array = np.asarray(values, dtype=np.float64)
    if len(array) < 2:
        return Interval(float(array.mean()) if len(array) else math.nan, math.nan, len(array))
    sem = array.std(ddof=1) / math.sqrt(len(array))
    return Interval(float(array.mean()), float(stats.t.ppf(0.975, len(array) - 1) * sem),
                    len(array))


def seeds_for_power(effect_size: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Smallest seeds per arm at which a two-sided two-sample t-test at `alpha` detects a
    standardized difference `effect_size` with probability `power`."""
    if not effect_size or not math.isfinite(effect_size):
        return 2 if effect_size else None
    for n in range(2, MAX_SEEDS_REPORTED + 1):
        df, shift = 2 * n - 2, abs(effect_size) * math.sqrt(n / 2)
        critical = stats.t.ppf(1 - alpha / 2, df)
        if stats.nct.sf(critical, df, shift) + stats.nct.cdf(-critical, df, shift) >= power:
            return n
    return None


def compare(values: Sequence[float], baseline: Sequence[float], better: str = "lower"
            ) -> Comparison:
    """The variant's `values` against the baseline's; `better` is "lower", "higher" or
    "neither" (then the verdict says which way it moved)."""
    a, b = np.asarray(values, np.float64), np.asarray(baseline, np.float64)
    difference = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return Comparison(difference, math.nan, "not distinguishable", None)
    p_value = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    pooled = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    effect = difference / pooled if pooled else (math.inf if difference else 0.0)
    verdict = "not distinguishable"
    if p_value < ALPHA or (not pooled and difference):
        higher = difference > 0
        verdict = {"lower": "worse" if higher else "better",
                   "higher": "better" if higher else "worse"}.get(
                       better, "higher" if higher else "lower")
    p_value = p_value if math.isfinite(p_value) else 0.0 if difference else 1.0
    return Comparison(difference, p_value, verdict, seeds_for_power(effect))


def decided(comparison: Comparison) -> bool:
    return comparison.verdict != "not distinguishable"
