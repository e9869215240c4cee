"""Final loss against parameter count at a fixed token budget, with a power-law fit."""

import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scales import FULL, TINY  # noqa: E402

from llm_jax.experiment import Experiment, Variant, main  # noqa: E402

WIDTHS = {"tiny": (64, 96, 128, 192), "full": (256, 512, 768, 1024)}


def fit_power_law(results: list[dict]) -> list[str]:
    """L(N) = a N^-alpha over non-embedding parameters (as Kaplan et al. count them), least
    squares in log-log space, without an irreducible-loss term."""
    n = np.array([r["non_embedding_params"] for r in results], dtype=np.float64)
    loss = np.array([r["eval_loss"] for r in results], dtype=np.float64)
    slope, intercept = np.polyfit(np.log(n), np.log(loss), 1)
    predicted = np.exp(intercept) * n**slope
    r2 = 1 - np.sum((loss - predicted) ** 2) / np.sum((loss - loss.mean()) ** 2)
    return [f"Power-law fit: L(N) = {math.exp(intercept):.3f} · N^({slope:+.4f}), "
            f"R² = {r2:.3f} over {len(n)} sizes (Kaplan et al. 2020 report alpha_N ≈ 0.076)."]


def variant(index: int) -> Variant:
    per_scale = {}
    for scale, widths in WIDTHS.items():
        d = widths[index]
        per_scale[scale] = (f"model.d_model={d}", f"model.mlp_dim={int(round(8 * d / 3 / 16) * 16)}",
                            f"model.num_heads={max(d // 32, 2)}",
                            f"model.num_kv_heads={max(d // 64, 1)}")
    return Variant(f"size{index}", (), per_scale)


EXPERIMENT = Experiment(
    name="scaling",
    question="How does final loss fall with model size when every model sees the same tokens?",
    reference=("Kaplan et al. 2020, 'Scaling Laws for Neural Language Models': L(N) ∝ N^-0.076 "
               "(non-embedding parameters, converged); Hoffmann et al. 2022 (Chinchilla) for "
               "the compute-optimal trade-off."),
    base="tiny",
    scales={"tiny": TINY, "full": FULL},
    variants=tuple(variant(i) for i in range(4)),
    summarize=fit_power_law,
)

if __name__ == "__main__":
    main(EXPERIMENT)
