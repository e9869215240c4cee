"""Small checkpoints for generation and evaluation tests, built offline in seconds.

- `hf_llama_dir`: a random `transformers.LlamaForCausalLM` with a word-level tokenizer (and a
  chat template), saved the way the hub ships models; `llm-jax import-hf` reads it.
- `own_checkpoint`: our own checkpoint layout, as training writes it, with a SentencePiece BPE
  tokenizer trained on a few KB of text.
"""

from __future__ import annotations

import io
from pathlib import Path

import jax

from llm_jax import checkpoint
from llm_jax.config import Config, DataConfig, ModelConfig
from llm_jax.model import init_params

WORDS = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(3, 101)]
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }} w3 {{ m['content'] }} w4 {% endfor %}"
                 "{% if add_generation_prompt %}assistant w3{% endif %}")

TEXT = """The quick brown fox jumps over the lazy dog. A stitch in time saves nine.
All that glitters is not gold. The early bird catches the worm. Actions speak louder than words.
Better late than never. Birds of a feather flock together. Every cloud has a silver lining.
Fortune favours the bold. Honesty is the best policy. Knowledge is power. Practice makes perfect.
"""


def hf_model(seed: int = 0, **overrides):
    import torch
    import transformers

    torch.manual_seed(seed)
    settings = dict(vocab_size=len(WORDS), hidden_size=64, num_hidden_layers=2,
                    intermediate_size=112, num_attention_heads=4, num_key_value_heads=2,
                    max_position_embeddings=128, tie_word_embeddings=False,
                    bos_token_id=1, eos_token_id=2, pad_token_id=0)
    settings.update(overrides)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**settings)).eval()
    with torch.no_grad():  # larger weights: sharper, more varied next-token distributions
        for name, p in model.named_parameters():
            if not name.endswith("norm.weight"):
                p.mul_(4.0)
    return model


def word_tokenizer():
    """A `PreTrainedTokenizerFast` over WORDS, split on whitespace."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def hf_llama_dir(path: Path, **overrides) -> Path:
    model = hf_model(**overrides)
    model.save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    return path


def imported_checkpoint(path: Path, **overrides) -> tuple[Path, object]:
    """(our checkpoint directory, the transformers model it was imported from)."""
    from llm_jax.convert.hf_import import import_hf_checkpoint

    src = hf_llama_dir(path / "hf", **overrides)
    import transformers

    model = transformers.LlamaForCausalLM.from_pretrained(src).eval()
    return import_hf_checkpoint(src, path / "ours"), model


def train_sentencepiece(out_file: Path, vocab_size: int = 96) -> Path:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT.splitlines() * 4), model_writer=model,
        vocab_size=vocab_size, model_type="bpe", character_coverage=1.0,
        minloglevel=2, bos_id=1, eos_id=2, unk_id=0, pad_id=3)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_bytes(model.getvalue())
    return out_file


OWN_MODEL = ModelConfig(vocab_size=96, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                        mlp_dim=64, max_seq_len=128, init_std=0.2)


def own_checkpoint(path: Path, with_tokenizer: bool = True) -> Path:
    """Our layout: config.yaml, checkpoints/0/params, tokenizer/tokenizer.model."""
    config = Config(run_dir=str(path), model=OWN_MODEL, data=DataConfig(seq_len=128))
    params = jax.jit(init_params, static_argnums=0)(OWN_MODEL, jax.random.key(0))  # eager: slow
    checkpoint.save_params(path, config, params)
    if with_tokenizer:
        train_sentencepiece(path / checkpoint.TOKENIZER_DIR / "tokenizer.model")
    return path
