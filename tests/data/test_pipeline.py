"""The grain pipeline: the batch contract, packing without leaks across documents, determinism,
exact resumption from a saved state, disjoint host shards, eval, and the pre-tokenized path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from batch_checks import assert_resumes_exactly, take

from llm_jax.config import Config, ConfigError, load_config
from llm_jax.data import corpus
from llm_jax.data.pipeline import batch_tokens, make_batch_iterator, split_indices
from llm_jax.data.sources import ReadProblems, StdlibSource, split_text
from llm_jax.data.tokenizer import SentencePieceTokenizer
from llm_jax.errors import UserError

T, B = 64, 8


@pytest.fixture(scope="module")
def texts(shakespeare: str) -> list[str]:
    """Real documents of very different lengths: short and long prose, code, one-liners."""
    prose = split_text(shakespeare[:30000], 1500)
    source = StdlibSource(max_doc_chars=5000)
    code = [d.text for u in source.units()[1:12] for d in source.read_unit(u, ReadProblems())][:20]
    short = [p.strip("\n") for p in split_text(shakespeare[38000:46000], 100) if p.strip()]
    return prose + code + short + ["Hi.", "A short line.", shakespeare[30000:38000]]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, texts: list[str]) -> Path:
    root = tmp_path_factory.mktemp("run")
    out = root / "curated"
    out.mkdir()
    halves = [texts[: len(texts) // 2], texts[len(texts) // 2 :]]
    start = 0
    for shard, part in enumerate(halves):
        records = [corpus.encode_record(t, str(start + i), "prose") for i, t in enumerate(part)]
        corpus.write_shard(out / corpus.shard_name(shard, 2), records)
        start += len(part)
    corpus.write_metadata(out, [len(h) for h in halves], sum(len(t) for t in texts))
    return root


def _config(run_dir: Path, *extra: str) -> Config:
    return load_config(None, [f"run_dir={run_dir}", f"data.seq_len={T}", f"train.batch_size={B}",
                              "data.eval_fraction=0.1", *extra])


def _segments(batch: dict[str, np.ndarray]):
    """(inputs, targets, positions) of every segment of every row."""
    for row in range(batch["inputs"].shape[0]):
        seg = batch["segment_ids"][row]
        for s in np.unique(seg[seg > 0]):
            at = seg == s
            yield batch["inputs"][row][at], batch["targets"][row][at], batch["positions"][row][at]


def _whole_documents(tok: SentencePieceTokenizer, batches) -> list[str]:
    """Texts of the documents that fit whole in one segment ([bos] ... -> ... [eos])."""
    found = []
    for batch in batches:
        for inputs, targets, positions in _segments(batch):
            if inputs[0] == tok.bos_id and targets[-1] == tok.eos_id:
                found.append(tok.decode(list(inputs[1:]) + [int(targets[-1])]))
    return found


def test_packed_batch_contract(run_dir: Path, trained_tokenizer: SentencePieceTokenizer,
                               texts: list[str]) -> None:
    tok = trained_tokenizer
    batches = take(make_batch_iterator(_config(run_dir), tok, process_index=0, process_count=1), 30)
    batch = batches[0]
    assert sorted(batch) == ["inputs", "loss_mask", "positions", "segment_ids", "targets"]
    for key, dtype in [("inputs", np.int32), ("targets", np.int32), ("segment_ids", np.int32),
                       ("positions", np.int32), ("loss_mask", np.float32)]:
        assert batch[key].dtype == dtype and batch[key].shape == (B, T), key
    for batch in batches:
        seg = batch["segment_ids"]
        np.testing.assert_array_equal(batch["loss_mask"], (seg > 0).astype(np.float32))
        assert np.all(batch["inputs"][seg == 0] == tok.pad_id)
        assert np.all(batch["targets"][seg == 0] == tok.pad_id)
        for row in seg:  # 1, 1, ..., 2, 2, ..., n, then padding
            real = row[row > 0]
            assert real[0] == 1 and np.all(np.diff(real) >= 0) and np.all(np.diff(real) <= 1)
            assert np.all(row[len(real):] == 0)
        for inputs, targets, positions in _segments(batch):
            np.testing.assert_array_equal(positions, np.arange(len(inputs)))
            np.testing.assert_array_equal(targets[:-1], inputs[1:])  # next token, same document
    whole = _whole_documents(tok, batches)
    assert len(whole) > 3 and set(whole) <= set(texts)
    assert sum(batch_tokens(b) for b in batches) > 0.8 * 30 * B * T  # packing leaves little padding


def test_concat_batch_contract(run_dir: Path, trained_tokenizer: SentencePieceTokenizer) -> None:
    tok = trained_tokenizer
    config = _config(run_dir, "data.packing=concat")
    batches = take(make_batch_iterator(config, tok, process_index=0, process_count=1), 20)
    for batch in batches:
        assert np.all(batch["segment_ids"] == 1)
        np.testing.assert_array_equal(batch["positions"], np.broadcast_to(np.arange(T), (B, T)))
        np.testing.assert_array_equal(batch["targets"][:, :-1], batch["inputs"][:, 1:])
        np.testing.assert_array_equal(batch["loss_mask"],
                                      (batch["inputs"] != tok.eos_id).astype(np.float32))
    assert any((b["inputs"] == tok.eos_id).any() for b in batches)


@pytest.mark.parametrize("packing", ["pack", "concat"])
def test_resume_continues_exactly(run_dir: Path, trained_tokenizer: SentencePieceTokenizer,
                                  packing: str) -> None:
    config = _config(run_dir, f"data.packing={packing}")
    host = {"process_index": 0, "process_count": 1}
    assert_resumes_exactly(lambda: make_batch_iterator(config, trained_tokenizer, **host), 11, 14)


def test_deterministic_and_seeded(run_dir: Path, trained_tokenizer: SentencePieceTokenizer) -> None:
    host = {"process_index": 0, "process_count": 1}
    a = take(make_batch_iterator(_config(run_dir), trained_tokenizer, **host), 5)
    b = take(make_batch_iterator(_config(run_dir), trained_tokenizer, **host), 5)
    c = take(make_batch_iterator(_config(run_dir), trained_tokenizer, seed=7, **host), 5)
    assert all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, b))
    assert not all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, c))


def test_train_repeats_with_a_new_order_each_epoch(
        run_dir: Path, trained_tokenizer: SentencePieceTokenizer) -> None:
    config = _config(run_dir, "data.packing=concat")
    it = make_batch_iterator(config, trained_tokenizer, process_index=0, process_count=1)
    seen = [next(it)["inputs"] for _ in range(400)]  # several passes over the small corpus
    assert len({row.tobytes() for batch in seen for row in batch}) > 0.9 * 400 * B


def test_hosts_read_disjoint_documents(run_dir: Path, trained_tokenizer: SentencePieceTokenizer,
                                       texts: list[str]) -> None:
    config = _config(run_dir)  # data.shards defaults to gcd(B, 64) = 8: shards 0-3 on host 0
    train_docs = split_indices(len(texts), 0.1, "train")
    per_host = []
    for host in range(2):
        it = make_batch_iterator(config, trained_tokenizer, process_index=host, process_count=2)
        batches = take(it, 40)
        assert batches[0]["inputs"].shape == (B // 2, T)
        mine = {texts[i] for shard in range(4 * host, 4 * host + 4) for i in train_docs[shard::B]}
        whole = set(_whole_documents(trained_tokenizer, batches))
        assert whole and whole <= mine
        per_host.append(mine)
    assert not per_host[0] & per_host[1]


@pytest.mark.parametrize("split", ["train", "eval"])
def test_processes_together_make_the_batches_of_one(
        run_dir: Path, split: str, trained_tokenizer: SentencePieceTokenizer) -> None:
    """Process h's rows, stacked in process order, are the one-process batch, for 2 and 4
    processes; the state saved by all of them resumes on another count."""
    config = _config(run_dir, "eval.steps=3")
    one = take(make_batch_iterator(config, trained_tokenizer, split=split, process_index=0,
                                   process_count=1), 6 if split == "train" else 3)
    for hosts in (2, 4):
        its = [make_batch_iterator(config, trained_tokenizer, split=split, process_index=h,
                                   process_count=hosts) for h in range(hosts)]
        for step in range(3):
            parts = [next(it) for it in its]
            for key in one[step]:
                np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]),
                                              one[step][key])
    if split == "train":
        from llm_jax.data.shards import merge_states

        saved = merge_states([it.get_state() for it in its])
        resumed = make_batch_iterator(config, trained_tokenizer, process_index=0, process_count=1)
        resumed.set_state(saved)
        for step in range(3, 6):
            batch = next(resumed)
            for key in batch:
                np.testing.assert_array_equal(batch[key], one[step][key])


def test_eval_is_one_padded_pass_over_held_out_documents(
        run_dir: Path, trained_tokenizer: SentencePieceTokenizer, texts: list[str]) -> None:
    tok = trained_tokenizer
    held_out = split_indices(len(texts), 0.1, "eval")
    assert len(held_out) == round(0.1 * len(texts))
    assert not set(held_out) & set(split_indices(len(texts), 0.1, "train"))
    whole = _config(run_dir, "eval.steps=0")
    batches = list(make_batch_iterator(whole, tok, split="eval", process_index=0, process_count=1))
    assert all(b["inputs"].shape == (B, T) for b in batches)
    expected_pairs = sum(len(tok.encode(texts[i])) + 1 for i in held_out)
    assert sum(batch_tokens(b) for b in batches) == expected_pairs
    again = list(make_batch_iterator(whole, tok, split="eval", process_index=0, process_count=1))
    assert all(np.array_equal(x["targets"], y["targets"]) for x, y in zip(batches, again))
    # With eval.steps every host yields exactly that many batches, padding after its share,
    # even a host that has no held-out document at all.
    steps = len(batches) + 3
    for host, hosts in [(0, 2), (1, 2), (len(held_out), len(held_out) + 1)]:
        config = _config(run_dir, f"eval.steps={steps}", f"train.batch_size={B * hosts}",
                         f"data.shards={hosts}")
        got = list(make_batch_iterator(config, tok, split="eval", process_index=host,
                                       process_count=hosts))
        assert len(got) == steps and all(b["inputs"].shape == (B, T) for b in got)
        assert got[-1]["loss_mask"].sum() == 0


def test_pretokenized_path_gives_the_same_batches(
        run_dir: Path, trained_tokenizer: SentencePieceTokenizer, tmp_path: Path) -> None:
    from llm_jax.data.pretokenize import pretokenize

    tokens = tmp_path / "tokens"
    config = _config(run_dir, f"data.tokens_dir={tokens}")
    meta = pretokenize(config, trained_tokenizer, progress=False)
    assert meta["shards"] == 2 and pretokenize(config, trained_tokenizer, progress=False)["skipped"]
    host = {"process_index": 0, "process_count": 1}
    from_text = take(make_batch_iterator(config, trained_tokenizer, **host), 8)
    pre = load_config(None, [*_args(config), "data.pretokenized=true"])
    from_ids = take(make_batch_iterator(pre, trained_tokenizer, **host), 8)
    for x, y in zip(from_text, from_ids):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    stale = json.loads((tokens / "meta.json").read_text())
    stale["settings"]["tokenizer"] = "another"
    (tokens / "meta.json").write_text(json.dumps(stale))
    with pytest.raises(UserError, match="made from another corpus or tokenizer"):
        make_batch_iterator(pre, trained_tokenizer, **host)


def _args(config: Config) -> list[str]:
    return [f"run_dir={config.run_dir}", f"data.seq_len={T}", f"train.batch_size={B}",
            "data.eval_fraction=0.1", f"data.tokens_dir={config.data.tokens_dir}"]


def test_configuration_errors(run_dir: Path, trained_tokenizer: SentencePieceTokenizer,
                              tmp_path: Path) -> None:
    host = {"process_index": 0, "process_count": 1}
    with pytest.raises(ConfigError, match="model.vocab_size"):
        make_batch_iterator(_config(run_dir, "model.vocab_size=512"), trained_tokenizer, **host)
    with pytest.raises(UserError, match="no complete curated corpus"):
        make_batch_iterator(_config(tmp_path), trained_tokenizer, **host)
    with pytest.raises(ConfigError, match="data.shards=8 is not divisible by the 3 processes"):
        make_batch_iterator(_config(run_dir), trained_tokenizer, process_index=0, process_count=3)
    with pytest.raises(ConfigError, match="data.shards=3 does not divide train.batch_size=8"):
        _config(run_dir, "data.shards=3")
    with pytest.raises(UserError, match="lower data.shards"):
        make_batch_iterator(_config(run_dir, "train.batch_size=1024", "data.shards=1024"),
                            trained_tokenizer, process_index=0, process_count=1)


def _rows_per_document(batch: dict[str, np.ndarray], documents: list[bytes]) -> int:
    """The most rows of `batch` whose first segment (when 16 tokens or more, so that it names
    its document) comes from one document."""
    counts: dict[int, int] = {}
    for row in range(batch["inputs"].shape[0]):
        piece = batch["inputs"][row][batch["segment_ids"][row] == 1].astype(np.int32)
        owner = next((i for i, ids in enumerate(documents) if len(piece) >= 16
                      and piece.tobytes() in ids), -1)
        counts[owner] = counts.get(owner, 0) + 1
    counts.pop(-1, None)
    return max(counts.values(), default=0)


def test_rows_of_a_long_document_are_spread_over_batches(
        run_dir: Path, trained_tokenizer: SentencePieceTokenizer, texts: list[str]) -> None:
    tok = trained_tokenizer
    documents = [np.array([tok.bos_id, *tok.encode(t), tok.eos_id], np.int32).tobytes()
                 for t in texts]
    host = {"process_index": 0, "process_count": 1}
    most = {}
    for rows in (0, 256):
        config = _config(run_dir, f"data.shuffle_rows={rows}", "data.shards=1")
        batches = take(make_batch_iterator(config, tok, **host), 40)
        most[rows] = np.mean([_rows_per_document(b, documents) for b in batches])
    # Packed in order, a long document's pieces fill whole batches; shuffled in windows of
    # 256 rows (32 batches), a batch holds a few rows of each document.
    assert most[0] > 6 and most[256] < 3.5, most
