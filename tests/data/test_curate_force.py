"""`llm-jax curate` deletes nothing it did not make, unless --force asks it to replace it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_jax.cli import main
from llm_jax.config import load_config
from llm_jax.data import corpus
from llm_jax.data.curate import curate
from llm_jax.data.curate_output import prepare_output
from llm_jax.errors import UserError

PARAGRAPH = ("The river ran past the mill where {name} kept the accounts of the village. "
             "Every morning the ledger was opened, and every evening it was closed again.\n\n")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few small text documents, enough for a pass-through curation in about a second."""
    root = tmp_path_factory.mktemp("raw")
    for i, name in enumerate(["Ada", "Brook", "Cyril", "Dora"]):
        (root / f"story{i}.txt").write_text(PARAGRAPH.format(name=name) * (3 + i))
    return root


def _args(run_dir: Path, source: Path, *extra: str) -> list[str]:
    return [f"run_dir={run_dir}", f"data.source={source}", "curate.prose_steps=",
            "curate.code_steps=", "curate.exact_dedup=false", "curate.minhash=false",
            "curate.tasks=1", "curate.workers=1", *extra]


def _config(run_dir: Path, source: Path, *extra: str):
    return load_config(None, _args(run_dir, source, *extra))


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_foreign_directory_is_not_deleted(tmp_path: Path, source: Path) -> None:
    out = tmp_path / "curated"
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "plan.txt").write_text("not a corpus")
    (out / "results.csv").write_text("a,b\n")
    before = _snapshot(out)
    with pytest.raises(UserError, match=r"was not made by llm-jax curate \(it holds notes/, "
                                        r"results.csv\); pass --force"):
        curate(_config(tmp_path, source), progress=False)
    assert _snapshot(out) == before


def test_cli_refuses_a_foreign_directory_in_one_line(tmp_path: Path, source: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    elsewhere = tmp_path / "mine"
    elsewhere.mkdir()
    (elsewhere / "thesis.tex").write_text("\\section{Results}")
    args = _args(tmp_path, source, f"data.curated_dir={elsewhere}", "--no-progress")
    assert main(["curate", *args]) == 2
    err = capsys.readouterr().err
    assert f"llm-jax curate: error: {elsewhere} exists and was not made by llm-jax curate" in err
    assert "--force" in err and "data.curated_dir" in err and "Traceback" not in err
    assert (elsewhere / "thesis.tex").read_text() == "\\section{Results}"


def test_settings_change_without_force_fails_and_keeps_the_corpus(tmp_path: Path,
                                                                  source: Path) -> None:
    first = curate(_config(tmp_path, source), progress=False)
    out = Path(first["corpus"])
    before = _snapshot(out)
    with pytest.raises(UserError, match=r"curated with other settings \(curate.rejected_samples: "
                                        r"20 -> 5\); pass --force"):
        curate(_config(tmp_path, source, "curate.rejected_samples=5"), progress=False)
    assert _snapshot(out) == before and corpus.is_complete(out)


def test_force_replaces_a_corpus_with_other_settings(tmp_path: Path, source: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    curate(_config(tmp_path, source), progress=False)
    out = tmp_path / "curated"
    (out / "stray.txt").write_text("left by hand")
    args = _args(tmp_path, source, "curate.max_documents=2", "--no-progress")
    assert main(["curate", *args]) == 2
    assert "curate.max_documents: 0 -> 2" in capsys.readouterr().err
    assert main(["curate", *args, "--force"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert not report["resumed"] and report["settings"]["curate"]["max_documents"] == 2
    assert report["documents_in"] == 2 and corpus.is_complete(out)
    assert not (out / "stray.txt").exists()


def test_force_replaces_a_foreign_directory(tmp_path: Path, source: Path) -> None:
    out = tmp_path / "curated"
    out.mkdir()
    (out / "old.txt").write_text("old")
    report = curate(_config(tmp_path, source), progress=False, force=True)
    assert not (out / "old.txt").exists() and corpus.is_complete(out)
    assert report["documents_out"] == report["documents_in"] == 4


def test_same_settings_resume_an_interrupted_run(tmp_path: Path, source: Path) -> None:
    config = _config(tmp_path, source)
    first = curate(config, progress=False)
    out = Path(first["corpus"])
    shard = out / first["shards"][0]
    written = shard.stat().st_mtime_ns
    for name in (corpus.INFO_FILE, "features.json", "report.json"):  # as if stopped before the end
        (out / name).unlink()
    assert not corpus.is_complete(out)
    again = curate(config, progress=False)
    assert again["resumed"] and corpus.is_complete(out)
    assert shard.stat().st_mtime_ns == written  # the finished task was skipped, not redone
    keep = ("documents_in", "documents_out", "steps")
    assert {k: again[k] for k in keep} == {k: first[k] for k in keep}


def test_an_empty_directory_is_taken_and_then_recognized(tmp_path: Path) -> None:
    out = tmp_path / "curated"
    out.mkdir()
    settings = {"version": 1, "source": "stdlib"}
    assert prepare_output(out, settings) is False
    assert prepare_output(out, settings) is True
    with pytest.raises(UserError, match="other settings \\(source: 'stdlib' -> 'x.txt'\\)"):
        prepare_output(out, {"version": 1, "source": "x.txt"})


def test_a_file_in_the_way_is_kept_without_force(tmp_path: Path) -> None:
    out = tmp_path / "curated"
    out.write_text("a file, not a directory")
    with pytest.raises(UserError, match="exists and is not a directory; pass --force"):
        prepare_output(out, {"version": 1})
    assert out.read_text() == "a file, not a directory"
    assert prepare_output(out, {"version": 1}, force=True) is False and out.is_dir()


def test_an_unreadable_settings_record_is_not_taken_as_a_match(tmp_path: Path) -> None:
    out = tmp_path / "curated"
    prepare_output(out, {"version": 1})
    (out / "_work" / "settings.json").write_text("{truncated")
    with pytest.raises(UserError, match="settings record is unreadable"):
        prepare_output(out, {"version": 1})


def test_force_never_replaces_the_current_directory(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "work.txt").write_text("precious")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="holds the current directory"):
        prepare_output(Path("."), {"version": 1}, force=True)
    assert (tmp_path / "work.txt").read_text() == "precious"
