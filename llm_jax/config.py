"""Typed run configuration: frozen dataclasses, YAML presets and `key.sub=value` overrides.

A run is fully described by its resolved `Config`, which is saved next to its checkpoints.
Every check that can be made without devices is made here, at load time, with a message that
says which key to change; the range of each numeric key is a row of `config_ranges.py`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from llm_jax import storage
from llm_jax.config_ranges import NUMERIC_RANGES
from llm_jax.errors import UserError

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(UserError, ValueError):
    """A user's configuration mistake; the message says what to change."""


def _check_choice(key: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not supported; choose one of {list(choices)}")


def _check_numbers(section: Any, prefix: str) -> None:
    """Checks every int and float field of `section` against its row in NUMERIC_RANGES.

    Called first in each section's `__post_init__`, so that the checks across fields that
    follow (divisibility, orderings) only ever see values in range.
    """
    for field in dataclasses.fields(section):
        value = getattr(section, field.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        key = f"{prefix}.{field.name}" if prefix else field.name
        problem = NUMERIC_RANGES[key].problem(key, value)
        if problem:
            raise ConfigError(problem)


@dataclasses.dataclass(frozen=True)
class RopeScalingConfig:
    """Llama 3.1 `rope_scaling` of type `llama3`; factor 0 disables it."""

    factor: float = 0.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self) -> None:
        _check_numbers(self, "model.rope_scaling")
        if self.factor and self.high_freq_factor <= self.low_freq_factor:
            raise ConfigError(
                f"model.rope_scaling.high_freq_factor={self.high_freq_factor} must be greater "
                f"than model.rope_scaling.low_freq_factor={self.low_freq_factor}")


LORA_MATRICES = ("q", "k", "v", "o", "gate", "up", "down")  # a block's attention and MLP matrices
QUANTIZATIONS = ("none", "bfloat16", "int8", "nf4")
NF4_BLOCK = 64  # values per nf4 absmax block (QLoRA, Dettmers et al. 2023)


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters (Hu et al. 2021): each targeted matrix W computes x W + (alpha / rank)
    x A B, with only A and B trained; rank 0 trains the whole model. `quantize` is how the
    frozen base matrices are stored: in model.param_dtype (none), bfloat16, int8 (per-column
    absmax) or nf4 (QLoRA: 4-bit NormalFloat in blocks of 64), dequantized layer by layer."""

    rank: int = 0
    alpha: float = 16.0
    targets: str = ",".join(LORA_MATRICES)  # a `gate` target is skipped by non-SwiGLU MLPs
    quantize: str = "none"  # none | bfloat16 | int8 | nf4 (needs rank > 0)

    def __post_init__(self) -> None:
        _check_numbers(self, "model.lora")
        _check_choice("model.lora.quantize", self.quantize, QUANTIZATIONS)
        for name in self.target_names:
            _check_choice("model.lora.targets entry", name, LORA_MATRICES)
        if self.rank and not self.target_names:
            raise ConfigError("model.lora.targets is empty; name the matrices to adapt, e.g. "
                              "q,v")
        if self.quantize != "none" and not self.rank:
            raise ConfigError(f"model.lora.quantize={self.quantize} freezes the base weights; "
                              "it needs adapters to train (model.lora.rank > 0)")

    @property
    def target_names(self) -> tuple[str, ...]:
        return tuple(n.strip() for n in self.targets.split(",") if n.strip())


@dataclasses.dataclass(frozen=True)
class MoeConfig:
    """Mixture-of-experts feed-forward blocks (`llm_jax/model/moe.py`): a router sends each
    token to `top_k` of `experts` SwiGLU experts (each of width model.mlp_dim), weighted by
    its renormalized top-k probabilities (Mixtral); `shared_experts` run on every token
    (DeepSeekMoE). 0 experts: the dense MLP."""

    experts: int = 0
    top_k: int = 2
    shared_experts: int = 0
    # Tokens an expert takes per batch row: capacity_factor x its even share, the rest
    # dropped (GShard, Switch); 0 is dropless (grouped matmuls, `jax.lax.ragged_dot`).
    capacity_factor: float = 0.0
    aux_loss: float = 0.01  # Switch Transformer's load-balancing loss, times this
    z_loss: float = 0.001  # ST-MoE's router z-loss, times this

    def __post_init__(self) -> None:
        _check_numbers(self, "model.moe")
        if self.experts and self.top_k > self.experts:
            raise ConfigError(f"model.moe.top_k={self.top_k} exceeds model.moe.experts="
                              f"{self.experts}")


ATTENTION_IMPLS = ("xla", "blockwise", "dot_product", "cudnn", "splash")
# Activations of a block named with `checkpoint_name` (llm_jax/model/remat.py), and the named
# policies: the names each keeps; `names` takes them from model.remat_save.
REMAT_NAMES = ("query_proj", "key_proj", "value_proj", "attention_out", "out_proj",
               "mlp_hidden", "mlp_out")
REMAT_PRESETS = {
    "save_qkv_proj": ("query_proj", "key_proj", "value_proj"),
    "save_attention": ("query_proj", "key_proj", "value_proj", "attention_out"),
    "save_out_proj": ("out_proj", "mlp_out"),
}
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", *REMAT_PRESETS, "names")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and ablation switches of the decoder; defaults are the `tiny` CPU model."""

    vocab_size: int = 4096
    d_model: int = 256
    num_layers: int = 4
    num_heads: int = 8
    num_kv_heads: int = 4
    head_dim: int = 0  # 0 means d_model // num_heads
    mlp_dim: int = 704
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    rope_scaling: RopeScalingConfig = RopeScalingConfig()
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    norm: str = "rmsnorm"  # rmsnorm | layernorm
    mlp: str = "swiglu"  # swiglu | gelu | relu2
    position: str = "rope"  # rope | learned | none
    qk_norm: bool = False
    attention: str = "xla"  # xla | blockwise | dot_product | cudnn | splash
    # A query sees itself and the sliding_window - 1 keys before it (0: every key before it).
    sliding_window: int = 0
    global_every: int = 0  # with sliding_window: layers N-1, 2N-1, ... see every key (0: none)
    attn_softcap: float = 0.0  # scores become cap * tanh(scores / cap) (Gemma 2: 50); 0: off
    # attention=splash: query and key block of its kernels (a multiple of 128, TPU's lane
    # count, dividing data.seq_len; one block when the sequence is shorter).
    splash_block: int = 512
    dtype: str = "float32"  # compute dtype: float32 | bfloat16
    param_dtype: str = "float32"
    remat: str = "none"  # none | full | dots | dots_no_batch | a REMAT_PRESETS name | names
    remat_save: str = ""  # remat=names: activations kept for the backward pass (REMAT_NAMES)
    # Layers per iteration of the scanned stack; num_layers unrolls it (faster on CPU and for
    # shallow models, slower to compile for deep ones).
    scan_unroll: int = 1
    init_std: float = 0.02
    lora: LoraConfig = LoraConfig()
    moe: MoeConfig = MoeConfig()

    def __post_init__(self) -> None:
        _check_numbers(self, "model")
        _check_choice("model.norm", self.norm, ("rmsnorm", "layernorm"))
        _check_choice("model.mlp", self.mlp, ("swiglu", "gelu", "relu2"))
        _check_choice("model.position", self.position, ("rope", "learned", "none"))
        _check_choice("model.attention", self.attention, ATTENTION_IMPLS)
        _check_choice("model.dtype", self.dtype, ("float32", "bfloat16"))
        _check_choice("model.param_dtype", self.param_dtype, ("float32", "bfloat16"))
        _check_choice("model.remat", self.remat, REMAT_POLICIES)
        self._check_remat_names()
        if self.splash_block % 128:
            raise ConfigError(f"model.splash_block={self.splash_block} must be a multiple of "
                              "128, the TPU's lane count")
        if self.global_every and not self.sliding_window:
            raise ConfigError(f"model.global_every={self.global_every} picks the global layers "
                              "among sliding-window ones; set model.sliding_window too")
        if self.attn_softcap and self.attention in ("dot_product", "cudnn"):
            raise ConfigError(f"model.attention={self.attention} cannot soft-cap scores "
                              "(model.attn_softcap); use xla, blockwise or splash")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"model.num_heads={self.num_heads} must be a multiple of "
                f"model.num_kv_heads={self.num_kv_heads} (grouped-query attention)"
            )
        if not self.head_dim and self.d_model % self.num_heads:
            raise ConfigError(
                f"model.d_model={self.d_model} is not divisible by model.num_heads="
                f"{self.num_heads}; change one of them or set model.head_dim"
            )
        if self.position == "rope" and self.resolved_head_dim % 2:
            raise ConfigError(f"RoPE needs an even head dimension, got {self.resolved_head_dim}")
        self._check_nf4_blocks()
        self._check_moe()

    def _check_moe(self) -> None:
        if not self.moe.experts:
            return
        if self.mlp != "swiglu":
            raise ConfigError(f"model.moe.experts are SwiGLU experts; model.mlp={self.mlp} "
                              "has no mixture-of-experts form here")
        adapted = set(self.lora.target_names) & {"gate", "up", "down"}
        if self.lora.rank and adapted:
            raise ConfigError(f"model.lora.targets {', '.join(sorted(adapted))} are experts' "
                              "matrices under model.moe, which take no adapters; target q,k,v,o")

    def _check_nf4_blocks(self) -> None:
        if self.lora.quantize != "nf4":
            return
        hd = self.resolved_head_dim
        blocked = {"model.num_heads x head dim": self.num_heads * hd,
                   "model.num_kv_heads x head dim": self.num_kv_heads * hd,
                   "model.mlp_dim": self.mlp_dim}
        for key, size in blocked.items():
            if size % NF4_BLOCK:
                raise ConfigError(f"model.lora.quantize=nf4 quantizes blocks of {NF4_BLOCK} "
                                  f"values, and {key}={size} is not a multiple of {NF4_BLOCK}; "
                                  "use model.lora.quantize=int8")

    def remat_names(self) -> tuple[str, ...]:
        """The activations a named remat policy keeps (the rest is recomputed)."""
        if self.remat == "names":
            return tuple(n.strip() for n in self.remat_save.split(",") if n.strip())
        return REMAT_PRESETS.get(self.remat, ())

    def _check_remat_names(self) -> None:
        if self.remat_save and self.remat != "names":
            raise ConfigError(f"model.remat_save applies to model.remat=names, not "
                              f"model.remat={self.remat}")
        for name in self.remat_names():
            _check_choice("model.remat_save entry", name, REMAT_NAMES)

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.d_model // self.num_heads


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh sizes per axis; -1 takes the devices that the other axes leave."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1
    pipe: int = 1
    context: int = 1  # context parallelism: the sequence split over this many devices
    expert: int = 1  # expert parallelism: the experts split over this many devices
    # Factors of the axes above that run across slices or hosts over the data-center network.
    dcn_data: int = 1
    dcn_fsdp: int = 1
    dcn_tensor: int = 1
    dcn_pipe: int = 1
    dcn_context: int = 1
    dcn_expert: int = 1
    # Overrides of the logical-axis rules (llm_jax/parallel/rules.py): "name:axis+axis,...".
    rules: str = ""

    def __post_init__(self) -> None:
        _check_numbers(self, "mesh")
        sizes = [self.data, self.fsdp, self.tensor, self.pipe, self.context, self.expert]
        if sizes.count(-1) > 1:
            raise ConfigError("at most one of mesh.data/fsdp/tensor/pipe/context/expert may "
                              "be -1")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where training text comes from and how it becomes fixed-length rows."""

    source: str = "stdlib"  # a path or glob, jsonl:PATH, tfds:NAME, or stdlib
    text_field: str = "text"
    seq_len: int = 256
    packing: str = "pack"  # pack (segment ids, no cross-document attention) | concat
    shuffle: bool = True
    shuffle_rows: int = 256  # train rows of a data shard shuffled together after packing; 0: off
    eval_fraction: float = 0.01
    worker_count: int = 0
    shards: int = 0  # fixed split of the data; 0: gcd(train.batch_size, 64) (data/shards.py)
    max_doc_chars: int = 20000  # text files are split at blank lines into documents up to this size
    tfds_split: str = "train"  # split read from a tfds:NAME source
    tfds_data_dir: str = ""  # TFDS data_dir; empty means TFDS's default
    curated_dir: str = ""  # curated corpus; empty: <corpora>/<source>-<hash>, or <run_dir>/curated
    corpora: str = ""  # shared prepared corpora (local or gs://), named by their settings
    pretokenized: bool = False  # read token ids written by `llm-jax tokenizer --pretokenize`
    tokens_dir: str = ""  # pre-tokenized shards; empty: beside a shared corpus, or <run_dir>/tokens
    # Weighted sources, each curated into its own corpus and mixed row by row in training:
    # "SOURCE=WEIGHT,..." (e.g. "web/*.txt=0.7,jsonl:code.jsonl=0.3"); empty: data.source alone.
    mixture: str = ""
    # Weights by training stage: "STEP:W1/W2/...,..." (from STEP on; one weight per source).
    mixture_stages: str = ""

    def __post_init__(self) -> None:
        _check_numbers(self, "data")
        _check_choice("data.packing", self.packing, ("pack", "concat"))
        members = self.mixture_members()
        self.mixture_schedule()
        if members and (self.curated_dir or self.tokens_dir):
            raise ConfigError("data.curated_dir and data.tokens_dir name one corpus; a "
                              "data.mixture's sources are curated under data.corpora (or "
                              "<run_dir>/corpora)")
        if self.mixture_stages and not members:
            raise ConfigError("data.mixture_stages needs data.mixture")

    def mixture_members(self) -> tuple[tuple[str, float], ...]:
        """data.mixture as ((source, weight), ...); empty without a mixture."""
        members = []
        for entry in filter(None, (e.strip() for e in self.mixture.split(","))):
            source, sep, weight = entry.rpartition("=")
            try:
                value = float(weight) if sep and source.strip() else -1.0
            except ValueError:
                value = -1.0
            if value <= 0 or not math.isfinite(value):
                raise ConfigError(f"data.mixture entry {entry!r} must be SOURCE=WEIGHT with a "
                                  "positive weight, e.g. web/*.txt=0.7")
            members.append((source.strip(), value))
        if len(members) == 1:
            raise ConfigError("data.mixture needs at least two sources; use data.source for one")
        return tuple(members)

    def mixture_schedule(self) -> tuple[tuple[int, tuple[float, ...]], ...]:
        """((first step, normalized weights), ...) in step order, from step 0."""
        members = self.mixture_members()
        if not members:
            return ()
        stages = [(0, tuple(w for _, w in members))]
        for entry in filter(None, (e.strip() for e in self.mixture_stages.split(","))):
            step, _, weights = entry.partition(":")
            try:
                values = tuple(float(w) for w in weights.split("/"))
                start = int(step)
            except ValueError:
                values, start = (), -1
            if (start <= stages[-1][0] or len(values) != len(members)
                    or any(w < 0 or not math.isfinite(w) for w in values) or not sum(values)):
                raise ConfigError(
                    f"data.mixture_stages entry {entry!r} must be STEP:W1/.../W{len(members)} "
                    "with increasing steps after 0 and non-negative weights, one per source")
            stages.append((start, values))
        return tuple((start, tuple(w / sum(ws) for w in ws)) for start, ws in stages)


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    """SentencePiece BPE tokenizer: where it lives and how it is trained."""

    path: str = ""
    vocab_size: int = 4096
    character_coverage: float = 0.9995
    max_sentences: int = 2_000_000  # SentencePiece input_sentence_size: lines sampled for training
    max_sentence_bytes: int = 4192  # longer lines are cut to this many bytes before training

    def __post_init__(self) -> None:
        _check_numbers(self, "tokenizer")


CURATE_NORMALIZERS = ("unwrap",)
CURATE_FILTERS = ("gopher_repetition", "gopher_quality", "c4", "fineweb", "toxicity")
CURATE_FORMATTERS = ("pii",)
CURATE_STEPS = CURATE_NORMALIZERS + CURATE_FILTERS + CURATE_FORMATTERS


@dataclasses.dataclass(frozen=True)
class CurateConfig:
    """`llm-jax curate`: which published filters run on which kind of document, and dedup settings.

    Step lists are comma-separated names from CURATE_STEPS; they always run in that canonical
    order (unwrap, filters, then exact and MinHash dedup over all documents, then PII).
    """

    prose_steps: str = "unwrap,gopher_repetition,gopher_quality,c4,fineweb,toxicity,pii"
    code_steps: str = "pii"  # code skips the prose heuristics, which would reject most of it
    exact_dedup: bool = True
    minhash: bool = True
    minhash_ngrams: int = 5  # word n-gram shingles
    minhash_buckets: int = 14
    minhash_hashes_per_bucket: int = 8
    toxicity_threshold: float = 0.9  # a line is toxic when the classifier's probability >= this
    toxicity_max_fraction: float = 0.05  # drop documents whose toxic lines exceed this share of text
    max_documents: int = 0  # 0 reads the whole source; otherwise about this many documents
    tasks: int = 4  # shards of the corpus; each is one resumable task and one output file
    workers: int = 1  # tasks run at once, each in its own process when > 1; 0: one per CPU
    rejected_samples: int = 20  # rejected documents kept per step for a person to inspect
    executor: str = "local"  # local | slurm | ray: datatrove's executor for the stages' tasks
    cpus_per_task: int = 1  # with executor=slurm or ray
    slurm_partition: str = ""  # with executor=slurm: the partition and time limit of its jobs
    slurm_time: str = "4:00:00"

    def __post_init__(self) -> None:
        _check_numbers(self, "curate")
        _check_choice("curate.executor", self.executor, ("local", "slurm", "ray"))
        for key in ("prose_steps", "code_steps"):
            for name in self.step_names(key.split("_")[0]):
                _check_choice(f"curate.{key} entry", name, CURATE_STEPS)

    def step_names(self, kind: str) -> list[str]:
        """The steps for documents of `kind` ("prose" or "code"), as listed in the config."""
        raw = self.prose_steps if kind == "prose" else self.code_steps
        return [name.strip() for name in raw.split(",") if name.strip()]


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """The optimizer (AdamW by default) with warmup then cosine (or warmup-stable-decay) learning
    rate; `llm_jax.train.optimizer` says how each reads these settings."""

    name: str = "adamw"  # adamw | lion | adafactor | muon
    mu_dtype: str = "float32"  # first moment of adamw, lion and muon: float32 | bfloat16
    zero1: bool = False  # optimizer state sharded over `data` too (ZeRO-1); parameters are not
    lr: float = 3e-4
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    schedule: str = "cosine"  # cosine | wsd | constant
    decay_fraction: float = 0.2  # wsd: share of steps spent decaying
    weight_decay: float = 0.1
    decay_norms: bool = False
    decay_embeddings: bool = False
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    clip_norm: float = 1.0

    def __post_init__(self) -> None:
        _check_numbers(self, "optimizer")
        _check_choice("optimizer.schedule", self.schedule, ("cosine", "wsd", "constant"))
        _check_choice("optimizer.name", self.name, ("adamw", "lion", "adafactor", "muon"))
        _check_choice("optimizer.mu_dtype", self.mu_dtype, ("float32", "bfloat16"))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Length, batch and objective of a run."""

    steps: int = 1000
    batch_size: int = 16  # global, in sequences
    microbatches: int = 1  # gradient accumulation steps (pipeline microbatches when mesh.pipe > 1)
    objective: str = "lm"  # lm | sft | dpo | reward | ppo
    z_loss: float = 0.0
    # lm / sft: sequence positions per chunk of the output projection fused with the loss, so
    # that the [batch, length, vocab] logits never exist; 0 computes them whole.
    loss_chunk: int = 0
    log_every: int = 10
    # Per-layer activation RMS, attention entropy and update/parameter norm ratio in the
    # metrics (train/instruments.py); costs one more forward pass per step.
    instrument: bool = False
    max_bad_steps: int = 5
    init_from: str = ""  # checkpoint directory to start from (fine-tuning)
    profile_steps: str = ""  # "start:stop" to write a jax.profiler trace

    def __post_init__(self) -> None:
        _check_numbers(self, "train")
        _check_choice("train.objective", self.objective, ("lm", "sft", "dpo", "reward", "ppo"))
        if self.batch_size % self.microbatches:
            raise ConfigError(
                f"train.batch_size={self.batch_size} is not divisible by "
                f"train.microbatches={self.microbatches}"
            )


CHAT_TEMPLATES = ("auto", "chatml", "llama3", "none")


@dataclasses.dataclass(frozen=True)
class PostTrainConfig:
    """Post-training data (objectives sft, dpo, reward, ppo): records, chat template, checks.

    Record kinds are recognized by their fields (llm_jax/data/records.py); every record that is
    dropped is counted by reason, and a run stops when more than `max_skipped_fraction` is.
    """

    data: str = ""  # JSONL files (.jsonl or .jsonl.gz): comma-separated paths or globs
    template: str = "auto"  # chatml | llama3 | none | auto: llama3 if its tokens exist, else chatml
    system: str = ""  # system message put before every conversation that has none
    eval_fraction: float = 0.05  # held-out share of the records, for eval.every
    max_skipped_fraction: float = 0.1
    packing: bool = True  # sft: several examples per row, no attention or loss across them

    def __post_init__(self) -> None:
        _check_numbers(self, "post")
        _check_choice("post.template", self.template, CHAT_TEMPLATES)


DPO_LOSSES = ("sigmoid", "ipo", "hinge", "robust")


@dataclasses.dataclass(frozen=True)
class DpoConfig:
    """Direct preference optimization (Rafailov et al. 2023) and its variants."""

    beta: float = 0.1
    loss: str = "sigmoid"  # sigmoid (DPO) | ipo (Azar et al.) | hinge (SLiC) | robust (rDPO)
    label_smoothing: float = 0.0  # robust: the assumed share of flipped labels, in [0, 0.5)
    reference: str = "model"  # model: frozen copy in the train state | precomputed: one pass

    def __post_init__(self) -> None:
        _check_numbers(self, "dpo")
        _check_choice("dpo.loss", self.loss, DPO_LOSSES)
        _check_choice("dpo.reference", self.reference, ("model", "precomputed"))
        if self.label_smoothing and self.loss != "robust":
            raise ConfigError("dpo.label_smoothing only applies to dpo.loss=robust")


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """Reward model: Bradley-Terry loss on a scalar head."""

    center_coef: float = 0.0  # weight of mean(r)^2 that keeps rewards centered (Eisenstein et al.)

    def __post_init__(self) -> None:
        _check_numbers(self, "reward")


@dataclasses.dataclass(frozen=True)
class PpoConfig:
    """RLHF with PPO (Ouyang et al. 2022; Schulman et al. 2017), or GRPO (Shao et al. 2024).

    Each rollout samples `train.batch_size * ppo.minibatches` responses (times `group_size`
    for grpo); the next `epochs * minibatches` train steps are PPO updates on them.
    """

    algorithm: str = "ppo"  # ppo (value head, GAE) | grpo (group-normalized scores, no critic)
    reward: str = ""  # a reward model checkpoint directory, or module:function (reward.py)
    kl_coef: float = 0.05  # per-token KL penalty against the reference (grpo: loss weight)
    gamma: float = 1.0
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    value_clip_range: float = 0.2
    vf_coef: float = 0.1
    whiten_advantages: bool = True
    epochs: int = 1  # passes over each rollout
    minibatches: int = 1  # train steps per pass
    group_size: int = 4  # grpo: responses per prompt
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        _check_numbers(self, "ppo")
        _check_choice("ppo.algorithm", self.algorithm, ("ppo", "grpo"))
        if self.algorithm == "grpo" and self.group_size < 2:
            raise ConfigError(f"ppo.group_size={self.group_size} must be at least 2 for grpo")

    @property
    def updates_per_rollout(self) -> int:
        return self.epochs * self.minibatches


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every: int = 200
    keep: int = 3
    async_save: bool = True

    def __post_init__(self) -> None:
        _check_numbers(self, "checkpoint")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    every: int = 200  # 0: only at the end of the run
    steps: int = 10  # 0: the whole held-out pass

    def __post_init__(self) -> None:
        _check_numbers(self, "eval")


@dataclasses.dataclass(frozen=True)
class Config:
    """The resolved description of one run."""

    run_dir: str = "runs/default"
    seed: int = 0
    model: ModelConfig = ModelConfig()
    mesh: MeshConfig = MeshConfig()
    data: DataConfig = DataConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    curate: CurateConfig = CurateConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    train: TrainConfig = TrainConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    eval: EvalConfig = EvalConfig()
    post: PostTrainConfig = PostTrainConfig()
    dpo: DpoConfig = DpoConfig()
    reward: RewardConfig = RewardConfig()
    ppo: PpoConfig = PpoConfig()

    def __post_init__(self) -> None:
        _check_numbers(self, "")
        if self.data.shards and self.train.batch_size % self.data.shards:
            raise ConfigError(
                f"data.shards={self.data.shards} does not divide train.batch_size="
                f"{self.train.batch_size}; each data shard makes an equal share of every batch")
        if self.data.seq_len > self.model.max_seq_len:
            raise ConfigError(
                f"data.seq_len={self.data.seq_len} exceeds model.max_seq_len="
                f"{self.model.max_seq_len}; lower data.seq_len or raise model.max_seq_len"
            )
        block = min(self.model.splash_block, self.data.seq_len)
        if self.model.attention == "splash" and self.data.seq_len % block:
            raise ConfigError(
                f"data.seq_len={self.data.seq_len} is not a multiple of model.splash_block="
                f"{self.model.splash_block}: splash attention works in whole blocks")
        if self.train.objective == "ppo" and self.ppo.max_new_tokens >= self.data.seq_len:
            raise ConfigError(
                f"ppo.max_new_tokens={self.ppo.max_new_tokens} leaves no room for a prompt in "
                f"data.seq_len={self.data.seq_len}; lower it or raise data.seq_len")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---------------------------------------------------------------------------------------------
# Building configs from dictionaries, YAML files and command-line overrides.


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key that a config accepts, e.g. `model.rope_scaling.factor`."""
    keys = []
    for name, hint in _field_types(cls).items():
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(hint):
            keys.extend(all_keys(hint, f"{key}."))
        else:
            keys.append(key)
    return keys


def _unknown_key_error(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}")


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Checks a leaf value against its annotated type, converting where it is lossless."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _coerce(key, value, option)
            except ConfigError:
                continue
        raise ConfigError(f"{key}={value!r} does not match type {hint}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "on", "off", "1", "0"):
            return value.lower() in ("true", "on", "1")
        raise ConfigError(f"{key}={value!r} must be true or false")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}={value!r} must be an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                return float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{key}={value!r} must be a number") from None
        return float(value)
    if hint is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}={value!r} must be a string")
        return "" if value is None else str(value)
    if hint is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}={value!r} must be null")
    return value


def _build(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    hints = _field_types(cls)
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in hints:
            while isinstance(value, Mapping) and value:
                sub, value = next(iter(value.items()))
                key = f"{key}.{sub}"
            raise _unknown_key_error(key)
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, Mapping):
                raise ConfigError(f"'{key}' is a section; give it sub-keys such as {key}.<name>")
            kwargs[name] = _build(hint, value, f"{key}.")
        else:
            kwargs[name] = _coerce(key, value, hint)
    return cls(**kwargs)


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@functools.cache
def _text_keys(cls: type = Config, prefix: str = "") -> frozenset[str]:
    keys = set()
    for name, hint in _field_types(cls).items():
        if dataclasses.is_dataclass(hint):
            keys |= _text_keys(hint, f"{prefix}{name}.")
        elif hint is str:
            keys.add(f"{prefix}{name}")
    return frozenset(keys)


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Turns `["model.d_model=512", "train.steps=10"]` into a nested dictionary."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.sub=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            # Text settings take the text as written: YAML would read `10:1` as 601.
            value = raw if key in _text_keys() else yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with an earlier one")
        node[parts[-1]] = value
    return nested


def preset_path(name_or_path: str) -> Path:
    """A preset name from `configs/` (e.g. `tiny`) or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        return path
    candidate = PRESET_DIR / f"{name_or_path}.yaml"
    if not candidate.exists():
        names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise ConfigError(f"no preset named '{name_or_path}'; presets: {', '.join(names)}")
    return candidate


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of config sections")
    base = values.pop("base", None)
    if base:
        values = _deep_merge(load_yaml(preset_path(base)), values)
    return values


def from_dict(values: Mapping[str, Any]) -> Config:
    return _build(Config, values)


def load_config(name_or_path: str | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults, then the preset or YAML file (which may name a `base`), then overrides."""
    values: dict[str, Any] = {}
    if name_or_path:
        values = load_yaml(preset_path(name_or_path))
    values = _deep_merge(values, parse_overrides(overrides))
    return from_dict(values)


def save_config(config: Config, path: str | Path) -> None:
    """Writes the resolved config (a local or gs:// path)."""
    path = storage.path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config.to_yaml())
