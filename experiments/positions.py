"""RoPE vs learned absolute positions vs no positional encoding (NoPE) in a causal decoder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scales import FULL, TINY  # noqa: E402

from llm_jax.experiment import Experiment, Variant, main  # noqa: E402

EXPERIMENT = Experiment(
    name="positions",
    question="How much do rotary, learned absolute, and no position encodings differ in loss?",
    reference=("Su et al. 2021 (RoFormer) report faster convergence and lower loss for RoPE than "
               "learned absolute positions; Kazemnejad et al. 2023 (NoPE) find causal decoders "
               "without position encodings competitive in-distribution."),
    base="tiny",
    scales={"tiny": TINY, "full": FULL},
    variants=tuple(Variant(kind, (f"model.position={kind}",))
                   for kind in ("rope", "learned", "none")),
)

if __name__ == "__main__":
    main(EXPERIMENT)
