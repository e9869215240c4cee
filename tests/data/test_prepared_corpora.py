"""Prepared once, read by many runs: with `data.corpora`, a curated corpus is named by its
source and a hash of the settings that shape it, its tokenizer and pre-tokenized shards live
beside it, and every run with those settings reads them without curating again."""

from llm_jax.config import load_config
from llm_jax.data.corpus import corpus_name, curated_dir
from llm_jax.data.pretokenize import tokens_dir
from llm_jax.data.tokenizer_training import default_model_path


def _config(tmp_path, *overrides):
    return load_config("tiny", [f"data.corpora={tmp_path / 'corpora'}", "curate.tasks=1",
                                "curate.max_documents=60", "tokenizer.vocab_size=400",
                                *overrides])


def test_the_corpus_name_changes_with_what_shapes_the_corpus_only(tmp_path):
    base = corpus_name(_config(tmp_path))
    assert base.startswith("stdlib-") and len(base) == len("stdlib-") + 12
    assert corpus_name(_config(tmp_path, "run_dir=elsewhere", "curate.workers=7",
                               "curate.tasks=64", "curate.executor=slurm", "train.steps=5",
                               "tokenizer.vocab_size=500")) == base
    assert corpus_name(_config(tmp_path, "curate.minhash=false")) != base
    assert corpus_name(_config(tmp_path, "data.max_doc_chars=5000")) != base
    assert corpus_name(load_config("tiny", ["data.source=jsonl:/data/web/*.jsonl.gz"])).startswith(
        "jsonl-data-web-.jsonl.gz-")
    config = _config(tmp_path)
    assert curated_dir(config) == tmp_path / "corpora" / base
    assert curated_dir(_config(tmp_path, f"data.curated_dir={tmp_path / 'mine'}")) == tmp_path / "mine"
    shared = default_model_path(config)
    assert shared.parent.parent == curated_dir(config) and shared.name == "tokenizer.model"
    assert default_model_path(_config(tmp_path, "tokenizer.vocab_size=500")) != shared


def test_runs_with_the_same_data_settings_read_one_prepared_corpus(tmp_path):
    from llm_jax.data.curate import curate
    from llm_jax.data.tokenizer_training import train_from_config
    from llm_jax.train.data import run_tokenizer

    first = _config(tmp_path, f"run_dir={tmp_path / 'run-a'}")
    made = curate(first, progress=False)
    trained = train_from_config(first, progress=False)
    second = _config(tmp_path, f"run_dir={tmp_path / 'run-b'}", "train.steps=3")
    again = curate(second, progress=False)
    assert again["resumed"] and again["documents_out"] == made["documents_out"]
    assert train_from_config(second, progress=False)["skipped"]
    tokenizer = run_tokenizer(second)
    assert tokenizer.fingerprint == trained["sha256"]
    assert tokens_dir(second, tokenizer) == curated_dir(first) / f"tokens-{tokenizer.fingerprint[:12]}"
    assert not (tmp_path / "run-a").exists() and not (tmp_path / "run-b").exists()
    assert sorted(p.name for p in (tmp_path / "corpora").iterdir()) == [corpus_name(first)]
