"""LoRA's rank, against full fine-tuning and a 4-bit (QLoRA) base.

Every run starts from one SFT checkpoint on the reversals of half of a word list (made once in
`<out>/_data`) and fine-tunes on the reversals of the other half, words it never saw; the held-
out records are words of that half no run trains on. Full fine-tuning is the baseline arm;
each LoRA arm adapts all seven block matrices (`model.lora.targets`' default) at a learning
rate 3x full fine-tuning's, as LoRA usually needs.

`tiny`: a 2-layer, d_model 128 Llama, 60 SFT steps (3% exact match on held-out words), then 100
fine-tuning steps per run. `full`: a GPT-2-small-sized model (124M parameters) on a TPU slice.
"""

from llm_jax.experiment import Experiment, Variant, main
from llm_jax.experiment_data import ReversalTask

RANKS = (1, 4, 16, 64)

TINY = ("model.vocab_size=304", "model.d_model=128", "model.num_layers=2", "model.num_heads=4",
        "model.num_kv_heads=2", "model.mlp_dim=384", "model.max_seq_len=64", "data.seq_len=64",
        "train.batch_size=16", "train.steps=100", "train.log_every=5", "optimizer.warmup_steps=10",
        "optimizer.weight_decay=0", "eval.every=0", "eval.steps=8", "checkpoint.every=1000")

FULL = ("model.vocab_size=304", "model.d_model=768", "model.num_layers=12", "model.num_heads=12",
        "model.num_kv_heads=12", "model.mlp_dim=2048", "model.max_seq_len=64", "data.seq_len=64",
        "model.dtype=bfloat16", "mesh.fsdp=-1", "train.batch_size=64", "train.steps=1500",
        "train.log_every=10", "optimizer.warmup_steps=100", "optimizer.weight_decay=0",
        "eval.every=250", "eval.steps=40", "checkpoint.every=500")

SFT = {"tiny": ("train.steps=60", "optimizer.lr=3e-3", "optimizer.warmup_steps=20"),
       "full": ("train.steps=1000", "optimizer.lr=3e-4", "optimizer.warmup_steps=100")}
FULL_LR = {"tiny": "optimizer.lr=3e-3", "full": "optimizer.lr=1e-4"}
LORA_LR = {"tiny": "optimizer.lr=1e-2", "full": "optimizer.lr=3e-4"}


def lora(label: str, *overrides: str) -> Variant:
    return Variant(label, overrides, per_scale={scale: (lr,) for scale, lr in LORA_LR.items()})


EXPERIMENT = Experiment(
    name="lora_rank",
    question="How low can LoRA's rank go before fine-tuning on new words falls behind full "
             "fine-tuning, and does storing the frozen base in 4 bits (QLoRA's nf4) cost "
             "anything?",
    reference=("Hu et al. 2021, 'LoRA', §7.2 and Table 6: on GPT-3 175B, adapting W_q and W_v "
               "with r = 1 already matched r = 64 on WikiSQL and MultiNLI, and LoRA matched or "
               "beat full fine-tuning (Table 4). Dettmers et al. 2023, 'QLoRA', Tables 3-4: "
               "LoRA on every linear layer of an NF4 base matched 16-bit LoRA and 16-bit full "
               "fine-tuning."),
    base="sft-tiny",
    scales={"tiny": TINY, "full": FULL},
    variants=(Variant("full", ("model.lora.rank=0",),
                      per_scale={scale: (lr,) for scale, lr in FULL_LR.items()}),
              *(lora(f"r={rank}", f"model.lora.rank={rank}") for rank in RANKS),
              lora("r=16-nf4", "model.lora.rank=16", "model.lora.quantize=nf4")),
    shared=ReversalTask(words={"tiny": 4000, "full": 200_000}, sft=SFT, runs_on="sft"),
    columns=(("eval_loss", "held-out completion loss"),),
    curves=("loss",),
)

if __name__ == "__main__":
    main(EXPERIMENT)
