"""`llm-jax curate` end to end on real text with planted duplicates, junk, PII and bad lines."""

from __future__ import annotations

import copy
import json
import time
from collections import defaultdict
from pathlib import Path

import pytest

pytest.importorskip("datatrove", reason="the [data] extra (datatrove) is not installed")

from datatrove.data import Document  # noqa: E402
from datatrove.pipeline.filters import (  # noqa: E402
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.filters.base_filter import get_filter_result  # noqa: E402

from llm_jax.cli import main  # noqa: E402
from llm_jax.config import load_config  # noqa: E402
from llm_jax.data import corpus  # noqa: E402
from llm_jax.data.curate import curate  # noqa: E402
from llm_jax.data.sources import open_source  # noqa: E402
from llm_jax.data.toxicity import ToxicityFilter  # noqa: E402
from llm_jax.errors import UserError  # noqa: E402

EMAIL = "maintainer.name@university.edu"
CODE = f'''"""Helpers for the report tool (contact {EMAIL})."""

SERVER = "8.8.4.4"


def total(values):
    return sum(v for v in values if v is not None)
'''
STEPS = ["unwrap", "gopher_repetition", "gopher_quality", "c4", "fineweb", "toxicity", "exact_dedup",
         "minhash", "pii"]


def _overrides(run_dir: Path, source: Path | str, *extra: str) -> list[str]:
    return [f"run_dir={run_dir}", f"data.source={source}", "data.max_doc_chars=6000",
            "curate.tasks=2", "curate.workers=1", *extra]


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory: pytest.TempPathFactory, shakespeare: str) -> Path:
    root = tmp_path_factory.mktemp("raw")
    for i in range(4):
        (root / f"play{i}.txt").write_text(shakespeare[i * 6000 : (i + 1) * 6000])
    (root / "play0-copy.txt").write_text(shakespeare[:6000])  # exact duplicates
    scene = shakespeare[28000:32000]
    (root / "scene.txt").write_text(scene)
    edited = scene + "\nAnd so this scene was written twice, with one more line in the copy.\n"
    (root / "scene-edited.txt").write_text(edited)  # near duplicate
    (root / "junk.txt").write_text("Buy now! Best price! " * 300)
    (root / "tool.py").write_text(CODE)
    lines = [json.dumps({"text": shakespeare[36000 + i * 3000 : 39000 + i * 3000]}) for i in range(3)]
    (root / "extra.jsonl").write_text("\n".join([lines[0], "{broken", lines[1], "[]", lines[2]]) + "\n")
    return root


@pytest.fixture(scope="module")
def curated(tmp_path_factory: pytest.TempPathFactory, source_dir: Path) -> tuple[dict, Path, list]:
    run_dir = tmp_path_factory.mktemp("run")
    config = load_config(None, _overrides(run_dir, source_dir))
    report = curate(config, progress=False)
    return report, run_dir / "curated", config


def _reference_filter(docs: list) -> list[Document]:
    """The filters applied directly with datatrove's (and our toxicity) defaults, in our order."""
    chain = [GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(), FineWebQualityFilter(),
             ToxicityFilter()]
    kept = []
    for raw in docs:
        doc = Document(text=raw.text, id=raw.id, metadata={"kind": raw.kind})
        if raw.kind == "prose" and not all(get_filter_result(f.filter(doc))[0] for f in chain):
            continue
        kept.append(doc)
    return kept


def _records(directory: Path) -> list[dict[str, str]]:
    import grain

    source = grain.sources.ArrayRecordDataSource(corpus.shard_paths(directory))
    return [corpus.decode_record(source[i]) for i in range(len(source))]


def test_report_shows_each_step(curated: tuple) -> None:
    report, out, _ = curated
    assert report["complete"] and [s["name"] for s in report["steps"]] == STEPS
    assert json.loads((out / "report.json").read_text()) == report
    previous_docs, previous_bytes = report["documents_in"], report["bytes_in"]
    for step in report["steps"]:
        assert (step["documents_in"], step["bytes_in"]) == (previous_docs, previous_bytes), step
        assert step["documents_out"] <= step["documents_in"]
        previous_docs, previous_bytes = step["documents_out"], step["bytes_out"]
    assert report["documents_out"] == previous_docs > 0
    by_name = {s["name"]: s for s in report["steps"]}
    assert by_name["exact_dedup"]["documents_out"] < by_name["exact_dedup"]["documents_in"]
    assert by_name["minhash"]["documents_out"] == by_name["minhash"]["documents_in"] - 1
    assert by_name["c4"]["lines_removed"]["no_terminal_punc"] > 0
    assert by_name["pii"]["documents_changed"] == 1
    assert report["read_problems"]["counts"] == {"malformed_json": 1, "not_an_object": 1}
    for name in ("gopher_repetition", "exact_dedup", "minhash"):
        sample = out / by_name[name]["rejected_sample"]
        assert sample.is_file() and json.loads(sample.read_text().splitlines()[0])["text"]


def test_output_matches_datatrove_filters_and_dedup(curated: tuple, source_dir: Path) -> None:
    report, out, config = curated
    docs, _ = open_source(config.data).read_all()
    assert len(docs) == report["documents_in"]
    expected = _reference_filter(copy.deepcopy(docs))
    records = _records(out)
    assert len(records) == report["documents_out"]
    out_ids = {r["id"] for r in records}
    assert out_ids <= {d.id for d in expected}
    groups = defaultdict(list)
    for doc in expected:
        groups[doc.text].append(doc.id)
    assert any(len(ids) > 1 for ids in groups.values()), "planted exact duplicates must survive filters"
    near = [doc.id for doc in expected if "/scene" in doc.id]
    assert len(near) == 2 and len(out_ids & set(near)) == 1
    for ids in groups.values():
        if not set(ids) & set(near):
            assert len(out_ids & set(ids)) == 1, ids  # one copy of each text, no more, no less
    code = next(r for r in records if r["kind"] == "code")
    assert EMAIL not in code["text"] and "8.8.4.4" not in code["text"] and "def total" in code["text"]
    assert not any("Buy now" in r["text"] for r in records)


def test_output_opens_with_tfds_and_grain(curated: tuple) -> None:
    import tensorflow_datasets as tfds

    report, out, _ = curated
    data = tfds.builder_from_directory(str(out)).as_data_source(split="train")
    assert len(data) == report["documents_out"]
    assert data[0]["text"].decode() == _records(out)[0]["text"]


def test_rerun_skips_finished_tasks(curated: tuple) -> None:
    report, out, config = curated
    started = time.time()
    again = curate(config, progress=False)
    assert again["resumed"] and time.time() - started < report["seconds"]
    keep = ("documents_in", "documents_out", "steps", "read_problems")
    assert {k: again[k] for k in keep} == {k: report[k] for k in keep}


def test_empty_after_filtering_is_an_error_and_not_complete(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "junk.txt").write_text("Buy now! Best price! " * 300)
    config = load_config(None, _overrides(tmp_path, tmp_path / "raw", "curate.minhash=false"))
    with pytest.raises(UserError, match="empty after curation: gopher_repetition removed"):
        curate(config, progress=False)
    out = tmp_path / "curated"
    assert not corpus.is_complete(out)
    assert json.loads((out / "report.json").read_text())["complete"] is False
    with pytest.raises(UserError, match="no complete curated corpus"):
        corpus.CorpusSource(out)


def test_nothing_usable_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"{oops\n" + b'{"text": "\xff\xfe"}\n' + b'{"body": "x"}\n')
    config = load_config(None, _overrides(tmp_path, bad))
    with pytest.raises(UserError, match="nothing usable .* 1 invalid utf8, 1 malformed json, 1 missing text field"):
        curate(config, progress=False)


def test_cli_prints_user_errors_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "missing.txt"
    assert main(["curate", "--config", "tiny", *_overrides(tmp_path, missing)]) == 2
    err = capsys.readouterr().err
    assert f"llm-jax curate: error: data.source: {missing} does not exist" in err
    assert "Traceback" not in err
    assert main(["curate", "--config", "tiny", f"run_dir={tmp_path}", "curate.prose_steps=gopher,c4"]) == 2
    assert "curate.prose_steps entry='gopher' is not supported" in capsys.readouterr().err


def test_tokenizer_command_trains_on_the_corpus(curated: tuple, capsys: pytest.CaptureFixture) -> None:
    from llm_jax.data.tokenizer import SentencePieceTokenizer

    report, out, config = curated
    args = ["--config", "tiny", f"run_dir={config.run_dir}", "tokenizer.vocab_size=600",
            "data.max_doc_chars=6000", "--no-progress"]
    assert main(["tokenizer", *args, "--pretokenize"]) == 0
    printed = capsys.readouterr().out
    assert "600 tokens, trained in" in printed and f"{report['documents_out']:,} documents" in printed
    model = Path(config.run_dir) / "tokenizer" / "tokenizer.model"
    record = json.loads(model.with_name("training.json").read_text())
    assert record["documents"] == report["documents_out"] and record["pad_id"] == 3
    assert SentencePieceTokenizer.load(model).vocab_size == 600
    assert (Path(config.run_dir) / "tokens" / "meta.json").is_file()
    assert main(["tokenizer", *args]) == 0
    assert "already trained on this corpus" in capsys.readouterr().out
