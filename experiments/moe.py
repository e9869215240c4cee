"""Dense vs mixture-of-experts feed-forward layers at equal active parameters per token.

Every arm has the same attention and the same SwiGLU width per token: the dense MLP's, one
expert of that width of 4 (top-1, Switch), or two of half that width of 8 (top-2, the
fine-grained experts of DeepSeekMoE). So each token costs about the same FLOPs, while the MoE
arms hold 4x the MLP parameters. Router losses at their papers' weights: load balancing 0.01,
z-loss 0.001.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scales import FULL, TINY, mlp_width  # noqa: E402

from llm_jax.experiment import Experiment, Variant, main  # noqa: E402

SCALES = ("tiny", "full")


def width(scale: str, share: int = 1) -> str:
    return f"model.mlp_dim={mlp_width(scale, gated=True) // share}"


EXPERIMENT = Experiment(
    name="moe",
    question="At equal active parameters per token, does routing each token to experts beat a "
             "dense feed-forward layer?",
    reference=("Fedus et al. 2021, 'Switch Transformers', Fig. 1 and Table 1: at equal FLOPs "
               "per token, top-1 routing over more experts lowers the loss at every step "
               "(Switch-Base 64 experts: -1.59 -> -1.44 neg. log-perplexity vs T5-Base at "
               "100k steps). Dai et al. 2024, 'DeepSeekMoE': more, smaller experts (top-2 of "
               "finer ones) beat GShard's top-2 of full-width ones at equal cost."),
    base="tiny",
    scales={"tiny": TINY, "full": FULL},
    variants=(Variant("dense", (), {scale: (width(scale),) for scale in SCALES}),
              Variant("moe-4x-top1", ("model.moe.experts=4", "model.moe.top_k=1"),
                      {scale: (width(scale),) for scale in SCALES}),
              Variant("moe-8x-top2", ("model.moe.experts=8", "model.moe.top_k=2"),
                      {scale: (width(scale, share=2),) for scale in SCALES})),
)

if __name__ == "__main__":
    main(EXPERIMENT)
