"""QK-norm on or off: RMSNorm on each head's queries and keys before RoPE."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scales import FULL, TINY  # noqa: E402

from llm_jax.experiment import Experiment, Variant, main  # noqa: E402

EXPERIMENT = Experiment(
    name="qk_norm",
    question="Does normalizing queries and keys change the loss at a learning rate near the "
             "edge of stability?",
    reference=("Wortsman et al. 2023, 'Small-scale proxies for large-scale Transformer training "
               "instabilities': without qk-layernorm, attention logits grow and high learning "
               "rates diverge, even in small models; with it, loss is stable over a wider range "
               "of learning rates (Dehghani et al. 2023 introduced it for ViT-22B)."),
    base="tiny",
    scales={"tiny": (*TINY, "optimizer.lr=1e-2", "train.instrument=true"),
            "full": (*FULL, "optimizer.lr=3e-3", "train.instrument=true")},
    variants=(Variant("no-qk-norm", ("model.qk_norm=false",)),
              Variant("qk-norm", ("model.qk_norm=true",))),
    curves=("loss", "attn_entropy/layer1", "update_ratio"),
)

if __name__ == "__main__":
    main(EXPERIMENT)
