"""A run directory holds what belongs to it: continued pretraining of an imported model with
its Hugging Face tokenizer, only the tokenizer's own files, and a resume that refuses another
model before it rewrites anything."""

from pathlib import Path

import numpy as np
import pytest

from checkpoint_factory import WORDS, imported_checkpoint, train_sentencepiece, word_tokenizer
from llm_jax import checkpoint
from llm_jax.cli import main
from llm_jax.config import load_config
from llm_jax.data.curate import curate
from llm_jax.data.tokenizer import HFTokenizer
from llm_jax.train.data import TrainingData
from llm_jax.train.metrics import read_metrics

SMALL = ["data.seq_len=32", "data.shards=1", "train.batch_size=8", "train.log_every=1",
         "eval.every=0", "eval.steps=1", "checkpoint.async_save=false", "optimizer.warmup_steps=2"]
OWN_MODEL = ["model.vocab_size=96", "model.d_model=32", "model.num_layers=2", "model.num_heads=4",
             "model.num_kv_heads=2", "model.mlp_dim=64", "model.max_seq_len=64"]


def _word_corpus(folder: Path, documents: int = 60) -> str:
    """Documents (one file each) of the word tokenizer's words in repeating patterns, learnable
    in a few steps; returns their glob."""
    rng = np.random.default_rng(0)
    words = WORDS[3:]
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(documents):
        start = int(rng.integers(len(words)))
        text = " ".join(words[(start + i) % 12] for i in range(80))
        (folder / f"{k:03d}.txt").write_text(text + "\n")
    return str(folder / "*.txt")


def _curated(root: Path, source: str) -> str:
    """A pass-through curation of the files `source` names (one document each)."""
    config = load_config("tiny", [f"run_dir={root}", f"data.source={source}",
                                  "curate.prose_steps=", "curate.code_steps=", "curate.tasks=1"])
    curate(config, progress=False)
    return f"data.curated_dir={root / 'curated'}"


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("imported")
    ours, _ = imported_checkpoint(root)
    return ours, _curated(root / "corpus", _word_corpus(root / "words"))


def test_pretraining_reads_an_imported_models_tokenizer_json(imported, tmp_path):
    ours, curated = imported
    config = load_config(str(ours / checkpoint.CONFIG_FILE),
                         [f"run_dir={tmp_path}", f"train.init_from={ours}", curated, *SMALL])
    data = TrainingData(config)
    assert isinstance(data.tokenizer, HFTokenizer)
    row = next(data.train_iterator())["inputs"][0]
    reference = word_tokenizer()
    words = reference.convert_ids_to_tokens([int(i) for i in row if i > 2])
    assert words and set(words) <= set(WORDS[3:15])  # the corpus's words, by the HF tokenizer
    assert data.token_bytes[reference.convert_tokens_to_ids("w10")] == 3  # "w10": 3 bytes
    assert data.token_bytes[reference.convert_tokens_to_ids("</s>")] == 0


def test_continued_pretraining_of_an_imported_checkpoint(imported, tmp_path):
    ours, curated = imported
    run = tmp_path / "run"
    assert main(["train", "--config", str(ours / checkpoint.CONFIG_FILE), "--no-progress",
                 f"run_dir={run}", f"train.init_from={ours}", curated, *SMALL,
                 "train.steps=12", "optimizer.lr=3e-3", "checkpoint.every=12"]) == 0
    losses = [r["loss"] for r in read_metrics(run)]
    assert losses[-1] < losses[0] - 0.5
    tokenizer_files = sorted(p.name for p in (run / checkpoint.TOKENIZER_DIR).iterdir())
    assert tokenizer_files == sorted(p.name for p in (ours / checkpoint.TOKENIZER_DIR).iterdir())
    assert "tokenizer.json" in tokenizer_files
    assert checkpoint.load_run_tokenizer(run).fingerprint == \
        checkpoint.load_run_tokenizer(ours).fingerprint


@pytest.fixture(scope="module")
def own_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    texts = root / "texts"
    texts.mkdir()
    for k in range(60):
        (texts / f"{k:03d}.txt").write_text(
            f"The {k}th quick brown fox jumps over the lazy dog again. " * 6 + "\n")
    return root, _curated(root / "corpus", str(texts / "*.txt"))


def test_a_run_inside_the_tokenizers_folder_copies_only_the_tokenizer(own_corpus):
    root, curated = own_corpus
    folder = root / "work"
    model = train_sentencepiece(folder / "bpe.model")
    (folder / "notes.txt").write_text("not part of the tokenizer")
    run = folder / "runs" / "a"
    args = ["train", "--config", "tiny", "--no-progress", f"run_dir={run}",
            f"tokenizer.path={model}", curated, *OWN_MODEL, *SMALL, "checkpoint.every=2"]
    assert main(args + ["train.steps=2"]) == 0
    assert main(args + ["train.steps=4"]) == 0  # resumes: the run does not copy itself
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4]
    assert [p.name for p in (run / checkpoint.TOKENIZER_DIR).iterdir()] == ["tokenizer.model"]
    assert (run / checkpoint.TOKENIZER_DIR / "tokenizer.model").read_bytes() == model.read_bytes()


def test_resuming_with_another_model_names_the_keys_and_keeps_the_run(own_corpus, tmp_path,
                                                                      capsys):
    root, curated = own_corpus
    model = train_sentencepiece(root / "bpe.model")
    args = ["train", "--config", "tiny", "--no-progress", f"run_dir={tmp_path}",
            f"tokenizer.path={model}", curated, *OWN_MODEL, *SMALL, "checkpoint.every=2"]
    assert main(args + ["train.steps=2"]) == 0
    saved = (tmp_path / checkpoint.CONFIG_FILE).read_text()
    capsys.readouterr()
    assert main(args + ["train.steps=4", "model.d_model=48", "model.mlp_dim=96"]) == 2
    error = capsys.readouterr().err
    assert "model.d_model: 32 -> 48" in error and "model.mlp_dim: 64 -> 96" in error
    assert "cannot resume" in error
    assert (tmp_path / checkpoint.CONFIG_FILE).read_text() == saved
