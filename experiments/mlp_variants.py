"""SwiGLU vs GELU vs ReLU² feed-forward layers at equal parameter count."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scales import FULL, TINY, mlp_width  # noqa: E402

from llm_jax.experiment import Experiment, Variant, main  # noqa: E402


def variant(kind: str) -> Variant:
    gated = kind == "swiglu"
    return Variant(kind, (f"model.mlp={kind}",), {
        scale: (f"model.mlp_dim={mlp_width(scale, gated)}",) for scale in ("tiny", "full")})


EXPERIMENT = Experiment(
    name="mlp_variants",
    question="Does a gated (SwiGLU) feed-forward layer beat GELU and squared ReLU at equal size?",
    reference=("Shazeer 2020, 'GLU Variants Improve Transformer', Table 1 (C4, 65,536 steps, "
               "log-perplexity): FFN_SwiGLU 1.944, FFN_GELU 1.983, FFN_ReLU 1.997. Squared ReLU: "
               "So et al. 2021 (Primer) report it beats GELU and ReLU."),
    base="tiny",
    scales={"tiny": TINY, "full": FULL},
    variants=tuple(variant(kind) for kind in ("swiglu", "gelu", "relu2")),
)

if __name__ == "__main__":
    main(EXPERIMENT)
