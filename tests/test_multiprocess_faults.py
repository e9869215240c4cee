"""Faults across real processes (2 simulated hosts x 4 CPU devices): SIGTERM on one host stops
all at one saved step, SIGKILL of one host stops the other within the heartbeat timeout,
both restarts continue with bitwise the losses of an uninterrupted run; processes that
disagree on the config fail at start; curate and tokenizer write their files once."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm_jax import checkpoint
from llm_jax.cli import main
from llm_jax.parallel.agreement import describe_differences
from llm_jax.parallel.launch import free_port, process_env
from llm_jax.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
HEARTBEAT = 10  # seconds; pods keep JAX's default of 100
MODEL = ["model.vocab_size=512", "model.d_model=64", "model.num_layers=2", "model.num_heads=4",
         "model.num_kv_heads=2", "model.mlp_dim=128", "model.max_seq_len=64", "data.seq_len=64",
         "train.batch_size=8", "optimizer.warmup_steps=2", "optimizer.lr=3e-3",
         "train.log_every=1", "eval.every=0", "eval.steps=2", "checkpoint.async_save=true"]
STEPS = 40
RUN = [f"train.steps={STEPS}", "checkpoint.every=10"]
CORPUS = ["curate.max_documents=120", "curate.tasks=1", "tokenizer.vocab_size=512"]


def start(args, processes=2, extra=None):
    """`python -m llm_jax <args>` as `processes` joined processes (`extra[i]`: more argv of
    process i); one process of 8 devices when `processes` is 1."""
    port = free_port()
    children = []
    for i in range(processes):
        if processes == 1:
            env = {**os.environ, "JAX_PLATFORMS": "cpu",
                   "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
        else:
            env = process_env(i, processes, 4, port)
            env["LLM_JAX_HEARTBEAT_TIMEOUT"] = str(HEARTBEAT)
        argv = [*args, *((extra or {}).get(i, []))]
        children.append(subprocess.Popen([sys.executable, "-m", "llm_jax", *argv], cwd=ROOT,
                                         env=env, text=True, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT))
    return children


def finish(children, timeout=600):
    """(exit codes, outputs) once every child has exited."""
    outputs = [child.communicate(timeout=timeout)[0] for child in children]
    return [child.returncode for child in children], outputs


def losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir)}


def wait_for(condition, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline and not condition():
        time.sleep(0.1)
    assert condition()


def files(directory):
    """Relative paths of every file but datatrove's logs."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*")
                  if p.is_file() and "logs" not in p.parts)


def contents(directory):
    """What the files hold: the corpus's texts and metadata, the tokenizer's pieces (the files
    themselves differ from run to run: temporary paths, proto field order)."""
    from llm_jax.data.corpus import CorpusSource
    from llm_jax.data.tokenizer import SentencePieceTokenizer

    corpus = CorpusSource(directory / "curated")
    tokenizer = SentencePieceTokenizer.load(directory / "tokenizer" / "tokenizer.model")
    return {"texts": [corpus[i] for i in range(len(corpus))],
            "pieces": [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)],
            **{name: (directory / "curated" / name).read_text()
               for name in ("dataset_info.json", "features.json")}}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """`curate` then `tokenizer` run by one process and by two, in their own run directories."""
    dirs, outputs = {n: tmp_path_factory.mktemp(f"corpus{n}") for n in (1, 2)}, {}
    for command in ("curate", "tokenizer"):
        for n, run_dir in dirs.items():
            codes, outputs[n, command] = finish(start([command, "--config", "tiny",
                                                       "--no-progress", f"run_dir={run_dir}",
                                                       *CORPUS], processes=n))
            assert codes == [0] * n, outputs[n, command]
    return {**dirs, **outputs}


@pytest.fixture(scope="module")
def corpus(corpora):
    root = corpora[1]
    return [f"data.curated_dir={root / 'curated'}",
            f"tokenizer.path={root / 'tokenizer' / 'tokenizer.model'}"]


def train_args(corpus, run_dir):
    return ["train", "--config", "tiny", "--no-progress", f"run_dir={run_dir}", *MODEL, *corpus,
            *RUN]


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """Losses of an uninterrupted two-process run."""
    run_dir = tmp_path_factory.mktemp("reference")
    codes, outputs = finish(start(train_args(corpus, run_dir)))
    assert codes == [0, 0], outputs
    assert sorted(losses(run_dir)) == list(range(1, STEPS + 1))
    return losses(run_dir)


def test_curate_and_tokenizer_on_two_processes_write_the_files_of_one(corpora):
    one = files(corpora[1])
    assert "curated/curated-train.array_record-00000-of-00001" in one
    assert "tokenizer/tokenizer.model" in one and "tokenizer/hf/tokenizer.json" in one
    assert files(corpora[2]) == one
    assert contents(corpora[2]) == contents(corpora[1])
    # Process 1 did not run the job: it prints process 0's result, down to the seconds it took.
    for command in ("curate", "tokenizer"):
        lines = [[line for line in out.splitlines()
                  if line.startswith("tokenizer ") or "documents kept in" in line]
                 for out in corpora[2, command]]
        assert lines[0] and lines[0] == lines[1], corpora[2, command]


def test_sigterm_to_one_process_stops_both_at_one_saved_step(corpus, reference, tmp_path):
    args = train_args(corpus, tmp_path)
    children = start(args)
    wait_for(lambda: len(losses(tmp_path)) >= 5)
    children[1].send_signal(signal.SIGTERM)
    codes, outputs = finish(children)
    assert codes == [0, 0], outputs
    saved = [[line for line in out.splitlines() if line.startswith("SIGTERM: saved step")]
             for out in outputs]
    assert saved[0] and saved[0] == saved[1], outputs
    step = int(saved[0][0].split()[3])
    assert 5 <= step < STEPS
    assert checkpoint.checkpoint_manager(tmp_path).latest_step() == step
    codes, outputs = finish(start(args))
    assert codes == [0, 0], outputs
    assert f"resumed {tmp_path} at step {step}" in outputs[0]
    assert losses(tmp_path) == reference


def test_sigkill_of_one_process_stops_the_other_within_the_heartbeat(corpus, reference,
                                                                    tmp_path):
    args = train_args(corpus, tmp_path)
    children = start(args)
    manager = checkpoint.checkpoint_manager(tmp_path)
    wait_for(lambda: (manager.reload() or manager.latest_step() or 0) >= 10
             and len(losses(tmp_path)) >= 12)
    children[1].send_signal(signal.SIGKILL)
    killed = time.time()
    output, _ = children[0].communicate(timeout=6 * HEARTBEAT)
    assert time.time() - killed < 3 * HEARTBEAT
    children[1].wait()
    assert children[0].returncode != 0
    assert "another task died" in output and "stopped sending heartbeats" in output, output
    codes, outputs = finish(start(args))
    assert codes == [0, 0], outputs
    assert "resumed" in outputs[0]
    assert losses(tmp_path) == reference


def test_processes_given_other_configs_fail_naming_the_difference(corpus, tmp_path):
    codes, outputs = finish(start(train_args(corpus, tmp_path), extra={1: ["optimizer.lr=1e-3"]}))
    assert codes == [2, 2], outputs
    for index, output in enumerate(outputs):
        assert (f"llm-jax train: error: process {index} of 2: the processes of this run "
                "disagree: process 1 runs another config than process 0: optimizer.lr: 0.003 "
                "on process 0, 0.001 on process 1") in output, output
    assert not (tmp_path / "checkpoints").exists()


def test_a_differing_source_file_is_named_with_its_processes():
    same = {"llm_jax/cli.py": "aaa", "llm_jax/train/loop.py": "bbb"}
    other = {**same, "llm_jax/train/loop.py": "ccc"}
    assert describe_differences("version of the code", [same, same, other]) == (
        "process 2 runs another version of the code than process 0: llm_jax/train/loop.py: "
        "bbb on process 0, ccc on process 2")
    assert describe_differences("version of the code", [same, same]) is None


def test_a_bad_heartbeat_timeout_fails_with_a_message(monkeypatch, capsys):
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1")
    monkeypatch.setenv("LLM_JAX_HEARTBEAT_TIMEOUT", "soon")
    assert main(["plan", "--config", "tiny", "--no-compile"]) == 2
    assert ("LLM_JAX_HEARTBEAT_TIMEOUT='soon' must be a whole number of seconds >= 1"
            in capsys.readouterr().err)


def test_a_job_that_fails_on_process_zero_stops_the_others_with_its_error(tmp_path):
    codes, outputs = finish(start(["curate", "--config", "tiny", "--no-progress",
                                   f"run_dir={tmp_path}", f"data.source={tmp_path}/none/*.txt"]))
    assert codes == [2, 2], outputs
    error = next(line for line in outputs[0].splitlines()
                 if line.startswith("llm-jax curate: error: process 0 of 2: "))
    message = error.removeprefix("llm-jax curate: error: process 0 of 2: ")
    assert ("llm-jax curate: error: process 1 of 2: process 0 failed, so this process stops "
            f"too: {message}") in outputs[1]
