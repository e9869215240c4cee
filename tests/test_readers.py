"""One bad-input policy for every reader of user data: curate's sources, `post.data` records and
the eval tasks' documents, GSM8K problems and multiple-choice items skip what they cannot use,
count it by reason with `file:line`, and fail, naming the file, only when nothing is left."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from checkpoint_factory import own_checkpoint
from llm_jax.cli import main
from llm_jax.config import DataConfig, load_config
from llm_jax.data import corpus
from llm_jax.data.curate import curate
from llm_jax.data.readers import ReadProblems
from llm_jax.data.sources import open_source
from llm_jax.errors import UserError
from llm_jax.eval import gsm8k
from llm_jax.eval.documents import read_documents
from llm_jax.eval.multiple_choice import load_choice_examples
from llm_jax.train.post_data import SftData
from post_training_factory import MODEL, train_chat_tokenizer

REPORT_FILE = "post_data.json"  # README: what post-training skipped, next to the run
NOT_UTF8 = b'{"text": "caf\xe9", "question": "caf\xe9"}'


def write_mixed(path: Path, good: list[dict], missing: dict) -> Path:
    """good[0], then one line of each kind of bad input (lines 2-5), a blank line, good[1]."""
    lines = [json.dumps(good[0]).encode(), NOT_UTF8, b"{not json", b"[1, 2]",
             json.dumps(missing).encode(), b"", json.dumps(good[1]).encode()]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def write_truncated_gz(path: Path, good: list[dict]) -> Path:
    """The records, gzipped, with the stream's last 8 bytes (CRC and length) cut off."""
    data = gzip.compress("".join(json.dumps(g) + "\n" for g in good).encode())
    path.write_bytes(data[:-8])
    return path


def write_hopeless(path: Path, missing: dict) -> Path:
    path.write_bytes(b"\n".join([b"{oops", NOT_UTF8, b'"a string"', json.dumps(missing).encode()]))
    return path


def check_samples(samples: dict[str, list[str]], mixed: Path, gz: Path, missing_reason: str,
                  gz_lines: int) -> None:
    firsts = {reason: places[0] for reason, places in samples.items()}
    assert firsts["invalid_utf8"] == f"{mixed}:2 (byte 13 of the line)"
    assert firsts["malformed_json"].startswith(f"{mixed}:3 (Expecting property name")
    assert firsts["not_an_object"] == f"{mixed}:4 (a JSON array)"
    assert firsts[missing_reason].startswith(f"{mixed}:5 (")
    assert firsts["corrupt_gzip"].startswith(f"{gz}:{gz_lines + 1} (the gzip stream breaks off")


def counts_with(missing_reason: str) -> dict[str, int]:
    return {"invalid_utf8": 1, "malformed_json": 1, "not_an_object": 1, missing_reason: 1,
            "corrupt_gzip": 1}


def check_hopeless_message(message: str, path: Path, missing_reason: str) -> None:
    """One line naming the file, the reasons and a place of each."""
    assert "\n" not in message and f"nothing usable in {path}" in message
    assert "skipped 4 of 4" in message
    assert f"1 invalid utf8 (e.g. {path}:2 (byte 13 of the line))" in message
    assert f"1 malformed json (e.g. {path}:1 " in message
    assert f"1 {missing_reason.replace('_', ' ')} (e.g. {path}:4 " in message
    assert "1 more" in message  # the fourth reason, not_an_object, is only counted


# ---- curate's sources -------------------------------------------------------------------------

TEXTS = [{"text": f"document number {i} of the corpus"} for i in range(4)]


def test_curate_source_skips_and_counts_bad_input(tmp_path: Path) -> None:
    mixed = write_mixed(tmp_path / "mixed.jsonl", TEXTS[:2], {"body": "no text"})
    gz = write_truncated_gz(tmp_path / "more.jsonl.gz", TEXTS[2:])
    docs, problems = open_source(DataConfig(source=str(tmp_path))).read_all()
    assert sorted(d.text for d in docs) == sorted(t["text"] for t in TEXTS)
    assert dict(problems.counts) == counts_with("missing_text_field")
    assert problems.read == 6 + 2
    check_samples(problems.samples, mixed, gz, "missing_text_field", 2)


def test_curate_text_file_names_the_line_of_a_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"first paragraph\nstill first\n\nsecond \xff paragraph is here\n\nthird one\n")
    docs, problems = open_source(DataConfig(source=str(path), max_doc_chars=30)).read_all()
    assert [d.text for d in docs] == ["first paragraph\nstill first", "third one"]
    assert problems.samples == {"invalid_utf8": [f"{path}:4 (part 1 of the file)"]}


def test_curate_with_nothing_usable_names_the_file(tmp_path: Path) -> None:
    bad = write_hopeless(tmp_path / "bad.jsonl", {"body": "x"})
    config = load_config(None, [f"run_dir={tmp_path / 'run'}", f"data.source={bad}",
                                "curate.tasks=1", "curate.workers=1"])
    with pytest.raises(UserError, match="nothing usable") as err:
        curate(config, progress=False)
    assert f"{bad}:1" in str(err.value) and "not an object" in str(err.value)


# ---- post.data --------------------------------------------------------------------------------

PAIRS = [{"prompt": w, "completion": w[::-1]} for w in ("abc", "hello", "xy", "jkl", "mno")]


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_chat_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.model")


def sft_config(tmp_path: Path, tokenizer_path: Path, data: str):
    return load_config("tiny", MODEL + [
        f"run_dir={tmp_path / 'run'}", f"tokenizer.path={tokenizer_path}", "train.objective=sft",
        f"post.data={data}", "train.batch_size=4", "post.max_skipped_fraction=1"])


def test_post_data_skips_and_counts_bad_input(tmp_path: Path, tokenizer_path: Path) -> None:
    mixed = write_mixed(tmp_path / "mixed.jsonl", PAIRS[:2], {"prompt": "abc"})
    gz = write_truncated_gz(tmp_path / "more.jsonl.gz", PAIRS[2:])
    data = SftData(sft_config(tmp_path, tokenizer_path, f"{mixed},{gz}"))
    assert len(data.examples) == len(PAIRS)
    report = json.loads((tmp_path / "run" / REPORT_FILE).read_text())
    assert report["skipped"] == counts_with("missing_fields")
    assert report["records"] == 6 + 3 and report["source"] == f"{mixed},{gz}"
    check_samples(report["skipped_samples"], mixed, gz, "missing_fields", 3)


def test_post_data_with_nothing_usable_names_the_file(tmp_path: Path, tokenizer_path: Path) -> None:
    bad = write_hopeless(tmp_path / "bad.jsonl", {"prompt": "abc"})
    with pytest.raises(UserError) as err:
        SftData(sft_config(tmp_path, tokenizer_path, str(bad)))
    message = str(err.value)
    assert message.startswith(f"sft data (chatml template): nothing to train on in {bad}: ")
    assert "\n" not in message and f"1 missing fields (e.g. {bad}:4 " in message
    assert f"1 malformed json (e.g. {bad}:1 " in message
    assert json.loads((tmp_path / "run" / REPORT_FILE).read_text())["records"] == 4  # still saved


# ---- perplexity documents ---------------------------------------------------------------------

def test_documents_skip_and_count_bad_input(tmp_path: Path) -> None:
    mixed = write_mixed(tmp_path / "mixed.jsonl", TEXTS[:2], {"body": "no text"})
    gz = write_truncated_gz(tmp_path / "more.jsonl.gz", TEXTS[2:])
    problems = ReadProblems()
    documents = read_documents(str(tmp_path / "*"), problems=problems)
    assert sorted(documents) == sorted(t["text"] for t in TEXTS)
    assert dict(problems.counts) == counts_with("missing_text_field")
    check_samples(problems.samples, mixed, gz, "missing_text_field", 2)


def test_documents_skip_a_text_file_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a good document\n")
    (tmp_path / "b.txt").write_bytes(b"line one\nline \xff two\n")
    problems = ReadProblems()
    assert read_documents(str(tmp_path / "*.txt"), problems=problems) == ["a good document\n"]
    assert problems.samples == {
        "invalid_utf8": [f"{tmp_path / 'b.txt'}:2 (a document must be UTF-8 throughout)"]}


def test_documents_with_nothing_usable_name_the_file(tmp_path: Path) -> None:
    bad = write_hopeless(tmp_path / "bad.jsonl", {"body": "x"})
    with pytest.raises(UserError) as err:
        read_documents(str(bad))
    check_hopeless_message(str(err.value), bad, "missing_text_field")


def test_documents_from_a_prepared_tfds_directory(tmp_path: Path) -> None:
    texts = [f"text of document {i}" for i in range(3)]
    corpus.write_shard(tmp_path / corpus.shard_name(0, 1),
                       [corpus.encode_record(t, str(i), "prose") for i, t in enumerate(texts)])
    corpus.write_metadata(tmp_path, [len(texts)], 100)
    assert read_documents(f"tfds:{tmp_path}:train") == texts
    with pytest.raises(UserError) as err:
        read_documents(f"tfds:{tmp_path}:train", text_field="body")
    assert str(err.value) == (
        f"nothing usable in tfds:{tmp_path}:train: skipped 3 of 3: 3 missing text field "
        f"(e.g. tfds:{tmp_path}:train:0 (no string field 'body'; its fields: id, kind, text))")


# ---- GSM8K ------------------------------------------------------------------------------------

PROBLEMS = [{"question": f"What is {i} + 1?", "answer": f"It is {i + 1}.\n#### {i + 1}"}
            for i in range(4)]


def test_gsm8k_problems_skip_and_count_bad_input(tmp_path: Path) -> None:
    mixed = write_mixed(tmp_path / "mixed.jsonl", PROBLEMS[:2], {"question": "no answer"})
    gz = write_truncated_gz(tmp_path / "more.jsonl.gz", PROBLEMS[2:])
    problems = ReadProblems()
    loaded = gsm8k.load_problems(mixed, problems=problems) + gsm8k.load_problems(gz, problems=problems)
    assert loaded == PROBLEMS
    assert dict(problems.counts) == counts_with("missing_fields")
    check_samples(problems.samples, mixed, gz, "missing_fields", 2)


def test_gsm8k_with_nothing_usable_names_the_file(tmp_path: Path) -> None:
    bad = write_hopeless(tmp_path / "bad.jsonl", {"question": "no answer"})
    with pytest.raises(UserError) as err:
        gsm8k.load_problems(bad)
    check_hopeless_message(str(err.value), bad, "missing_fields")


# ---- multiple choice --------------------------------------------------------------------------

ITEMS = [{"query": f"Pick {i}:", "choices": [str(i), "other"], "gold": 0} for i in range(4)]


def test_multiple_choice_items_skip_and_count_bad_input(tmp_path: Path) -> None:
    mixed = write_mixed(tmp_path / "mixed.jsonl", ITEMS[:2], {"query": "no choices", "gold": 0})
    gz = write_truncated_gz(tmp_path / "more.jsonl.gz", ITEMS[2:])
    problems = ReadProblems()
    examples = load_choice_examples(mixed, problems=problems) + load_choice_examples(gz, problems=problems)
    assert [(e.context, e.choices, e.gold) for e in examples] == [
        (i["query"], i["choices"], i["gold"]) for i in ITEMS]
    assert dict(problems.counts) == counts_with("missing_fields")
    check_samples(problems.samples, mixed, gz, "missing_fields", 2)


def test_multiple_choice_gold_outside_the_choices_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "mc.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [ITEMS[0], {**ITEMS[1], "gold": 2},
                                                      {**ITEMS[2], "gold": "first"}]))
    problems = ReadProblems()
    assert len(load_choice_examples(path, problems=problems)) == 1
    assert problems.samples == {"bad_gold": [
        f"{path}:2 (gold index 2 is not one of the 2 choices)",
        f"{path}:3 (gold 'first' is not a choice's index)"]}


def test_multiple_choice_with_nothing_usable_names_the_file(tmp_path: Path) -> None:
    bad = write_hopeless(tmp_path / "bad.jsonl", {"query": "no choices", "gold": 0})
    with pytest.raises(UserError) as err:
        load_choice_examples(bad)
    check_hopeless_message(str(err.value), bad, "missing_fields")


def test_eval_prints_what_it_skipped(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = own_checkpoint(tmp_path / "ckpt")
    mixed = write_mixed(tmp_path / "mixed.jsonl", ITEMS[:2], {"query": "no choices", "gold": 0})
    assert main(["eval", "--checkpoint", str(ckpt), "--task", "multiple_choice",
                 "--data", str(mixed)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["examples"] == 2
    skipped = [line for line in captured.err.splitlines() if line.startswith("multiple_choice data:")]
    assert len(skipped) == 1 and skipped[0].startswith("multiple_choice data: skipped 4 of 6: ")
    assert f"(e.g. {mixed}:2 (byte 13 of the line))" in skipped[0]
