"""Sources: every supported input, sharding between readers, and bad input counted, not fatal."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest

from llm_jax.config import DataConfig
from llm_jax.data import corpus
from llm_jax.data.sources import ReadProblems, StdlibSource, open_source, split_text
from llm_jax.errors import UserError


def test_split_text_is_lossless_and_bounded(shakespeare: str) -> None:
    pieces = split_text(shakespeare, 2000)
    assert "".join(pieces) == shakespeare
    assert max(map(len, pieces)) <= 2000 and len(pieces) > 20
    assert all(p.endswith("\n\n") for p in pieces[:-1])  # cut at blank lines
    rng = random.Random(0)
    for limit in (1, 7, 64, 500):
        text = "".join(rng.choice(["ab", " ", "\n", "\n\n", "\t", "é", "x" * 90]) for _ in range(400))
        pieces = split_text(text, limit)
        assert "".join(pieces) == text and max(map(len, pieces)) <= limit


def test_stdlib_corpus_has_code_and_documentation() -> None:
    source = StdlibSource(max_doc_chars=20000)
    files = source.units()[1:]
    assert len(files) > 300
    assert not any("/test/" in f or "site-packages" in f for f in files)
    topics = list(source.read_unit(source.TOPICS, ReadProblems()))
    assert len(topics) > 20 and all(d.kind == "prose" for d in topics)
    json_init = next(f for f in files if f.endswith("json/__init__.py"))
    docs = list(source.read_unit(json_init, ReadProblems()))
    kinds = {d.kind: d for d in docs}
    assert "import" in kinds["code"].text and kinds["code"].id == "stdlib:json/__init__.py:0"
    assert kinds["prose"].text.startswith("json\n\nJSON (JavaScript Object Notation)")
    assert "json.dumps\n\nSerialize" in kinds["prose"].text


def _write_files(tmp_path: Path, shakespeare: str) -> list[str]:
    paths = []
    for i in range(5):
        path = tmp_path / f"part{i}.txt"
        path.write_text(shakespeare[i * 9000 : (i + 1) * 9000])
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("files", [5, 2])
def test_ranks_read_disjoint_shares_that_cover_everything(tmp_path: Path, shakespeare: str, files: int) -> None:
    paths = _write_files(tmp_path, shakespeare)[:files]
    source = open_source(DataConfig(source=str(tmp_path / "part*.txt"), max_doc_chars=2000))
    everything = [d.id for d in source.read(0, 1)]
    assert len(everything) == len(set(everything)) > 10
    shares = [[d.id for d in source.read(rank, 3)] for rank in range(3)]
    assert sorted(sum(shares, [])) == sorted(everything)
    assert all(shares)
    assert len(paths) == files


def test_max_documents_caps_the_read(tmp_path: Path, shakespeare: str) -> None:
    _write_files(tmp_path, shakespeare)
    source = open_source(DataConfig(source=str(tmp_path), max_doc_chars=1000))
    assert sum(len(list(source.read(rank, 2, max_documents=7))) for rank in range(2)) == 7


def test_jsonl_bad_lines_are_counted_and_skipped(tmp_path: Path) -> None:
    good = [{"text": f"document number {i}"} for i in range(4)]
    lines = [json.dumps(good[0]).encode(), b"{not json", json.dumps(good[1]).encode(),
             b'{"text": "caf\xe9 latin-1"}', json.dumps({"body": "no text field"}).encode(),
             b"", json.dumps(good[2]).encode(), b"[1, 2]", json.dumps(good[3]).encode()]
    path = tmp_path / "mixed.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    docs, problems = open_source(DataConfig(source=f"jsonl:{path}")).read_all()
    assert [d.text for d in docs] == [g["text"] for g in good]
    assert dict(problems.counts) == {"malformed_json": 1, "invalid_utf8": 1, "missing_text_field": 1,
                                     "not_an_object": 1}
    assert problems.samples["malformed_json"] == [f"{path}:2 (Expecting property name enclosed in "
                                                  "double quotes at column 2)"]
    assert problems.samples["not_an_object"] == [f"{path}:8 (a JSON array)"]


def test_jsonl_several_text_fields(real_data: Path) -> None:
    source = open_source(DataConfig(source=str(real_data / "gsm8k-test.jsonl"), text_field="question,answer"))
    docs, problems = source.read_all(max_documents=3)
    assert len(docs) == 3 and not problems.counts
    assert "\n\n" in docs[0].text and "####" in docs[0].text
    only_question, problems = open_source(DataConfig(source=str(real_data / "gsm8k-test.jsonl"))).read_all()
    assert not only_question and problems.counts["missing_text_field"] == 20


def test_text_with_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"good paragraph one\n\n" + b"bad \xff\xfe bytes here\n\n" + b"good paragraph three\n")
    docs, problems = open_source(DataConfig(source=str(path), max_doc_chars=25)).read_all()
    assert [d.text for d in docs] == ["good paragraph one", "good paragraph three"]
    assert problems.counts == {"invalid_utf8": 1}
    assert problems.samples["invalid_utf8"] == [f"{path}:3 (part 1 of the file)"]


def test_missing_inputs_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        open_source(DataConfig(source=str(tmp_path / "nope.txt")))
    with pytest.raises(UserError, match="matches no files"):
        open_source(DataConfig(source=str(tmp_path / "*.txt")))
    with pytest.raises(UserError, match="holds no files"):
        open_source(DataConfig(source=str(tmp_path)))
    with pytest.raises(UserError, match=r"cannot open TFDS data set .*\(tfds build"):
        open_source(DataConfig(source="tfds:no_such_dataset_anywhere", tfds_data_dir=str(tmp_path)))


def test_tfds_source_reads_a_prepared_dataset(tmp_path: Path) -> None:
    texts = [f"text of document {i}" for i in range(7)]
    shard = tmp_path / corpus.shard_name(0, 1)
    corpus.write_shard(shard, [corpus.encode_record(t, str(i), "prose") for i, t in enumerate(texts)])
    corpus.write_metadata(tmp_path, [len(texts)], 100)
    source = open_source(DataConfig(source=f"tfds:{tmp_path}"))
    assert [d.text for d in source.read(0, 1)] == texts
    assert [d.text for d in source.read(1, 2)] == texts[1::2]
