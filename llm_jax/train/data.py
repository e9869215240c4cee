"""The training run's view of its data: the curated corpus through the grain pipeline,
tokenized by the run's tokenizer, plus the byte length of every token for bits per byte."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from llm_jax.config import Config
from llm_jax.data.pipeline import make_batch_iterator
from llm_jax.data.tokenizer import META_SPACE, Tokenizer, default_model_path
from llm_jax.train.checkpoint import TOKENIZER_DIR


def token_byte_lengths(tokenizer: Tokenizer) -> np.ndarray:
    """UTF-8 bytes of text each token stands for (control tokens 0, byte tokens 1)."""
    lengths = np.zeros(tokenizer.vocab_size, np.float32)
    specials = {tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, tokenizer.unk_id}
    for index in range(tokenizer.vocab_size):
        if index in specials:
            continue
        piece = tokenizer.id_to_token(index)
        if piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
            lengths[index] = 1
        else:
            lengths[index] = len(piece.replace(META_SPACE, " ").encode("utf-8"))
    return lengths


class TrainingData:
    """`train_iterator()` (checkpointable), `eval_iterator()` (one fixed pass), `token_bytes`."""

    def __init__(self, config: Config):
        self.config = config
        self.tokenizer = Tokenizer.load(default_model_path(config))
        self.token_bytes = token_byte_lengths(self.tokenizer)

    def train_iterator(self):
        return make_batch_iterator(self.config, self.tokenizer, split="train")

    def eval_iterator(self):
        return make_batch_iterator(self.config, self.tokenizer, split="eval")

    def copy_tokenizer_to(self, run_dir: str | Path) -> None:
        """Keeps the run directory self-contained: generate, eval and export read it there."""
        source = default_model_path(self.config).parent
        target = Path(run_dir) / TOKENIZER_DIR
        if source.resolve() != target.resolve():
            shutil.copytree(source, target, dirs_exist_ok=True)
