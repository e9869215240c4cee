"""The training run's view of its data: the curated corpus through the grain pipeline,
tokenized by the run's tokenizer, plus the byte length of every token for bits per byte."""

from __future__ import annotations


from llm_jax import checkpoint, storage
from llm_jax.config import Config
from llm_jax.data.pipeline import make_batch_iterator
from llm_jax.data.tokenizer import Tokenizer, load_tokenizer
from llm_jax.data.tokenizer_training import default_model_path
from llm_jax.errors import UserError


def run_tokenizer(config: Config) -> Tokenizer:
    """`tokenizer.path` (a SentencePiece model, a `tokenizer.json`, or their directory), else
    the tokenizer of the checkpoint in `train.init_from` (continued pretraining or fine-tuning
    of an imported model), else the run directory's own (`llm-jax tokenizer` writes it there)."""
    if config.tokenizer.path:
        return load_tokenizer(config.tokenizer.path)
    if config.train.init_from:
        return checkpoint.load_run_tokenizer(config.train.init_from)
    if config.data.corpora:  # the one `llm-jax tokenizer` trained beside the shared corpus
        return load_tokenizer(default_model_path(config))
    own = storage.path(config.run_dir) / checkpoint.TOKENIZER_DIR
    if own.is_dir() and any(own.iterdir()):
        return load_tokenizer(own)
    raise UserError(f"no tokenizer at {own}: run `llm-jax tokenizer` (with the same --config) "
                    "first, set tokenizer.path, or set train.init_from to a checkpoint with one")


class TrainingData:
    """`train_iterator()` (checkpointable), `eval_iterator()` (one fixed pass), `token_bytes`."""

    def __init__(self, config: Config):
        self.config = config
        self.tokenizer = run_tokenizer(config)
        self.token_bytes = self.tokenizer.token_byte_lengths()

    def train_iterator(self):
        return make_batch_iterator(self.config, self.tokenizer, split="train")

    def eval_iterator(self):
        return make_batch_iterator(self.config, self.tokenizer, split="eval")
