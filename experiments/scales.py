"""Shared scale settings for the pretraining ablations.

`tiny`: a 2-layer, d_model 128 Llama on the built-in corpus, a few minutes per run on a
2-core CPU. `full`: GPT-2-small-sized runs (124M parameters, 1024 tokens) on a TPU slice
(the mesh is all FSDP; add `mesh.*=` overrides on the command line for other layouts), on C4
curated once under `data.corpora` and shared by every experiment: pass your bucket
(`data.corpora=gs://my-bucket/corpora`) on the command line.
"""

TINY = ("model.d_model=128", "model.num_layers=2", "model.num_heads=4", "model.num_kv_heads=2",
        "model.max_seq_len=128", "data.seq_len=128", "train.batch_size=16", "train.steps=200",
        "train.log_every=10", "optimizer.lr=3e-3", "optimizer.warmup_steps=20",
        "eval.every=0", "eval.steps=8", "checkpoint.every=200",
        "train.loss_chunk=16")  # 256-token chunks: their logits stay in cache, 1.2x faster on CPU

FULL = ("model.d_model=768", "model.num_layers=12", "model.num_heads=12",
        "model.num_kv_heads=12", "model.max_seq_len=1024", "data.seq_len=1024",
        "model.vocab_size=32000", "tokenizer.vocab_size=32000", "model.dtype=bfloat16",
        "data.source=tfds:c4/en", "data.corpora=gs://YOUR_BUCKET/corpora",
        "train.batch_size=256", "train.steps=20000", "optimizer.lr=6e-4", "optimizer.warmup_steps=1000", "eval.every=2000",
        "eval.steps=50", "checkpoint.every=2000", "mesh.fsdp=-1",
        "model.attention=splash", "model.scan_unroll=1")

D_MODEL = {"tiny": 128, "full": 768}


def mlp_width(scale: str, gated: bool) -> int:
    """Hidden width at equal parameters: 4 d for two matrices, 2/3 of that for SwiGLU's three
    (Shazeer 2020), rounded to a multiple of 16."""
    width = 4 * D_MODEL[scale] * (2 / 3 if gated else 1)
    return int(round(width / 16) * 16)
