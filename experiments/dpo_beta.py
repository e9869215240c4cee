"""DPO's beta: how far the policy moves from its reference, and what it buys on held-out pairs.

Every run starts from one SFT checkpoint (made once in `<out>/_data`, which is also the frozen
reference) and trains with DPO on word-reversal preferences: the right reversal against a near
miss (`llm_jax.data.reversal`), so a preference is right by construction and the held-out
pairs are words neither stage has seen. `log π/π_ref` is the policy's summed log-prob of a
held-out reply minus the reference's: how far DPO moved the policy, in nats, comparable across
betas (the rewards are beta times it). It stands in for the KL to the reference, which needs
samples from the policy.

`tiny`: a 2-layer, d_model 128 Llama, 200 SFT steps, then 160 DPO steps per run; the whole
sweep (4 betas x 3 seeds) took 11 minutes on a shared 2-core CPU. `full`: a GPT-2-small-sized
policy (124M parameters), about one pass over 100k pairs at the paper's batch of 64 and warmup
of 150 steps, on a TPU slice (all FSDP).
"""

from llm_jax.experiment import Experiment, Variant, main
from llm_jax.experiment_data import ReversalTask

BETAS = (0.01, 0.1, 0.5, 1.0)  # 0.1: the paper's default; 0.5: its TL;DR runs

TINY = ("model.vocab_size=304", "model.d_model=128", "model.num_layers=2", "model.num_heads=4",
        "model.num_kv_heads=2", "model.mlp_dim=352", "model.max_seq_len=64", "data.seq_len=64",
        "train.batch_size=16", "train.steps=160", "train.log_every=4", "optimizer.lr=1e-4",
        "optimizer.warmup_steps=5", "eval.every=0", "eval.steps=7", "checkpoint.every=1000")

FULL = ("model.vocab_size=304", "model.d_model=768", "model.num_layers=12", "model.num_heads=12",
        "model.num_kv_heads=12", "model.mlp_dim=2048", "model.max_seq_len=64", "data.seq_len=64",
        "model.dtype=bfloat16", "mesh.fsdp=-1", "train.batch_size=64", "train.steps=1500",
        "train.log_every=10", "optimizer.lr=1e-5", "optimizer.warmup_steps=150",
        "eval.every=250", "eval.steps=40", "checkpoint.every=500")

SFT = {"tiny": ("train.steps=200", "optimizer.lr=3e-3", "optimizer.warmup_steps=20"),
       "full": ("train.steps=3000", "optimizer.lr=3e-4", "optimizer.warmup_steps=200")}

EXPERIMENT = Experiment(
    name="dpo_beta",
    question="How does DPO's beta trade the preference margin against drift from the reference?",
    reference=("Rafailov et al. 2023, 'Direct Preference Optimization', §6.1 and Fig. 2: on "
               "IMDb sentiment generation (GPT-2-large) they swept beta and plotted reward "
               "against KL(π‖π_ref); DPO gave the most efficient reward-KL frontier of the "
               "methods compared. Beta weighs the KL term of the RLHF objective that DPO "
               "optimizes (eq. 3): a smaller beta lets the policy move further from the "
               "reference. Appendix B: beta = 0.1 by default, 0.5 for TL;DR summarization."),
    base="dpo-tiny",
    scales={"tiny": TINY, "full": FULL},
    variants=tuple(Variant(f"beta={beta}", (f"dpo.beta={beta}",)) for beta in BETAS),
    shared=ReversalTask(words={"tiny": 4000, "full": 200_000}, sft=SFT),
    columns=(("eval_loss", "DPO loss"), ("eval_rewards_accuracies", "reward accuracy"),
             ("eval_rewards_margins", "reward margin"),
             ("eval_logratio_chosen", "log π/π_ref chosen"),
             ("eval_logratio_rejected", "log π/π_ref rejected")),
    curves=("loss", "rewards_accuracies", "logratio_rejected"),
    better={"eval_rewards_accuracies": "higher", "eval_rewards_margins": "higher",
            "eval_logratio_chosen": "neither", "eval_logratio_rejected": "neither"},
)

if __name__ == "__main__":
    main(EXPERIMENT)
