"""Peak learning rate at 1/10, 1 and 10 times the scale's own, at a fixed token budget.

The arms differ in no shape, so each one's seeds train as one ensemble."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scales import FULL, TINY  # noqa: E402

from llm_jax.experiment import Experiment, Variant, main  # noqa: E402

RATES = {"tiny": 3e-3, "full": 6e-4}  # the scales' own (scales.py)

EXPERIMENT = Experiment(
    name="learning_rate",
    question="How much does a learning rate 10x off the tuned one cost at a fixed budget?",
    reference=("Wortsman et al. 2023, 'Small-scale proxies for large-scale Transformer training "
               "instabilities', Fig. 1: final loss against learning rate is a basin around the "
               "optimum; 10x below it trains too slowly, and far above it small models become "
               "unstable (worse loss, or divergence without qk-layernorm)."),
    base="tiny",
    scales={"tiny": TINY, "full": FULL},
    variants=tuple(
        Variant(label, (), {scale: (f"optimizer.lr={rate * factor:.3g}",)
                            for scale, rate in RATES.items()})
        for label, factor in (("lr x1", 1.0), ("lr x0.1", 0.1), ("lr x10", 10.0))),
)

if __name__ == "__main__":
    main(EXPERIMENT)
