"""RMSNorm vs LayerNorm in a pre-norm Llama decoder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scales import FULL, TINY  # noqa: E402

from llm_jax.experiment import Experiment, Variant, main  # noqa: E402

EXPERIMENT = Experiment(
    name="norms",
    question="Does RMSNorm match LayerNorm's loss without the mean subtraction?",
    reference=("Zhang & Sennrich 2019, 'Root Mean Square Layer Normalization': comparable "
               "quality to LayerNorm with 7%-64% less running time across their models."),
    base="tiny",
    scales={"tiny": TINY, "full": FULL},
    variants=tuple(Variant(kind, (f"model.norm={kind}",)) for kind in ("rmsnorm", "layernorm")),
)

if __name__ == "__main__":
    main(EXPERIMENT)
