"""data.mixture: two real sources curated and tokenized by the commands, mixed by weight."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from batch_checks import assert_resumes_exactly, take

from llm_jax.cli import main
from llm_jax.config import ConfigError, load_config
from llm_jax.data.mixture import SOURCE_FIELD, member_configs
from llm_jax.data.pipeline import make_batch_iterator
from llm_jax.data.tokenizer import load_tokenizer
from llm_jax.train.data import run_tokenizer
from llm_jax.train.metrics import read_metrics

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MIXTURE = f"jsonl:{FIXTURES / 'clean-prose.jsonl'}=3,{FIXTURES / 'tinyshakespeare.txt'}=1"
SETTINGS = [f"data.mixture={MIXTURE}", "data.max_doc_chars=2000", "curate.prose_steps=pii",
            "curate.minhash=false", "data.seq_len=64", "train.batch_size=8",
            "tokenizer.vocab_size=512", "model.vocab_size=512", "data.eval_fraction=0.1"]
HOST = {"process_index": 0, "process_count": 1}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`llm-jax curate` and `llm-jax tokenizer` on the mixture, as a user runs them."""
    root = tmp_path_factory.mktemp("mixture")
    args = ["--config", "tiny", f"run_dir={root}", *SETTINGS]
    assert main(["curate", "--no-progress", *args]) == 0
    assert main(["tokenizer", "--no-progress", *args]) == 0
    return root


def _config(run_dir: Path, *extra: str):
    return load_config("tiny", [f"run_dir={run_dir}", *SETTINGS, *extra])


def test_each_source_is_its_own_corpus_and_the_tokenizer_learns_from_both(run_dir: Path):
    config = _config(run_dir)
    members = member_configs(config)
    assert [m.data.source for m in members] == [s.rpartition("=")[0] for s in MIXTURE.split(",")]
    homes = sorted(p.name for p in (run_dir / "corpora").iterdir())
    assert len(homes) == 2 and homes[0] != homes[1]
    tokenizer = run_tokenizer(config)
    record = json.loads((run_dir / "tokenizer" / "training.json").read_text())
    documents = [json.loads((run_dir / "corpora" / h / "dataset_info.json").read_text())
                 for h in homes]
    assert record["documents"] > 33 and tokenizer.vocab_size == 512 and documents


def test_rows_follow_the_weights_and_the_stages(run_dir: Path):
    tokenizer = run_tokenizer(_config(run_dir))
    batches = take(make_batch_iterator(_config(run_dir, "data.mixture_stages=60:0/1"),
                                       tokenizer, **HOST), 120)
    first = np.concatenate([b[SOURCE_FIELD] for b in batches[:60]])
    later = np.concatenate([b[SOURCE_FIELD] for b in batches[60:]])
    share = np.mean(first == 0)  # 480 rows at p = 0.75: standard deviation 0.02
    assert abs(share - 0.75) < 0.08, share
    assert np.all(later == 1)  # the stage gives the second source all the weight
    # Each row holds its own source's text: Shakespeare's rows have his speakers' names.
    for batch in batches[:10]:
        for row, source in zip(batch["inputs"], batch[SOURCE_FIELD]):
            text = tokenizer.decode([int(t) for t in row if t != tokenizer.pad_id])
            if "\n\n" in text and ":\n" in text:
                assert source == 1, text
    tokens = [np.mean([b["loss_mask"][b[SOURCE_FIELD] == m].sum() for b in batches[:60]])
              for m in (0, 1)]
    assert abs(tokens[0] / sum(tokens) - 0.75) < 0.08  # rows are packed full: tokens follow


def test_a_resumed_mixture_continues_exactly(run_dir: Path):
    config = _config(run_dir)
    tokenizer = run_tokenizer(config)
    assert_resumes_exactly(lambda: make_batch_iterator(config, tokenizer, **HOST), 9, 11)


def test_two_processes_make_the_batches_of_one(run_dir: Path):
    config = _config(run_dir)
    tokenizer = run_tokenizer(config)
    one = take(make_batch_iterator(config, tokenizer, **HOST), 5)
    parts = [take(make_batch_iterator(config, tokenizer, process_index=p, process_count=2), 5)
             for p in (0, 1)]
    for whole, halves in zip(one, zip(*parts)):
        for key in whole:
            np.testing.assert_array_equal(whole[key], np.concatenate([h[key] for h in halves]))


def test_held_out_documents_of_every_source_are_evaluated(run_dir: Path):
    config = _config(run_dir, "eval.steps=0")
    tokenizer = run_tokenizer(config)
    batches = list(make_batch_iterator(config, tokenizer, split="eval", **HOST))
    text = " ".join(tokenizer.decode([int(t) for t in row if t != tokenizer.pad_id])
                    for batch in batches for row in batch["inputs"])
    assert SOURCE_FIELD not in batches[0]
    assert ":\n" in text and "." in text  # a play's speakers and the prose articles


def test_training_logs_the_tokens_of_each_source(run_dir: Path):
    args = ["--config", "tiny", f"run_dir={run_dir}", *SETTINGS, "train.steps=4",
            "train.log_every=2", "eval.steps=1", "checkpoint.every=4"]
    assert main(["train", "--no-progress", *args]) == 0
    records = read_metrics(run_dir)
    names = sorted(k for k in records[-1] if k.startswith("tokens/"))
    assert len(names) == 2, records[-1]
    # Two steps of 8 rows per log: the counts add up to every real target token trained on.
    assert sum(records[-1][n] for n in names) == pytest.approx(2 * records[-1]["tokens"],
                                                               rel=0.2)
    assert load_tokenizer(run_dir / "tokenizer").vocab_size == 512


def test_bad_mixtures_name_the_setting():
    with pytest.raises(ConfigError, match="data.mixture entry 'a' must be SOURCE=WEIGHT"):
        load_config("tiny", ["data.mixture=a,b=1"])
    with pytest.raises(ConfigError, match="data.mixture_stages entry '10:1' must be"):
        load_config("tiny", ["data.mixture=a=1,b=1", "data.mixture_stages=10:1"])
    with pytest.raises(ConfigError, match="data.curated_dir and data.tokens_dir name one corpus"):
        load_config("tiny", ["data.mixture=a=1,b=1", "data.curated_dir=/x"])
