"""`gs://` everywhere, against a Cloud Storage API server on localhost (tests/gcs_server.py)
reached through STORAGE_EMULATOR_HOST, as Google's client libraries and Orbax reach it.

A corpus curated into `gs://` and its tokenizer equal the local ones; a run whose run_dir is
`gs://` logs the losses of the same run on local disk, SIGKILL and resume included; eval,
generate and export-hf read the `gs://` checkpoint as they read a local one; a missing bucket,
a wrong path and absent credentials are one-line errors naming the path.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from llm_jax import storage
from llm_jax.config import load_config

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "llm-jax-test"
MODEL = ["model.vocab_size=512", "model.d_model=64", "model.num_layers=2", "model.num_heads=4",
         "model.num_kv_heads=2", "model.mlp_dim=128", "model.max_seq_len=64", "data.seq_len=64",
         "train.batch_size=8", "optimizer.warmup_steps=2", "optimizer.lr=3e-3",
         "train.log_every=1", "eval.every=0", "eval.steps=2", "checkpoint.async_save=true"]
STEPS = 60
RUN = [f"train.steps={STEPS}", "checkpoint.every=20", "checkpoint.keep=2"]
CORPUS = ["curate.max_documents=120", "curate.tasks=1", "tokenizer.vocab_size=512"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """The server, and this process pointed at it (the CLI processes get the same variables)."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "gcs_server.py"), str(port),
                               BUCKET], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert server.stdout.readline().strip() == "ready"
    env = {"STORAGE_EMULATOR_HOST": f"http://localhost:{port}",
           "TENSORSTORE_GCS_HTTP_URL": f"http://localhost:{port}",
           "LLM_JAX_CACHE": str(tmp_path_factory.mktemp("cache"))}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.kill()
    server.wait()


def run_cli(args, env, devices=8):
    """`llm-jax ARGS` with `env` over this process' variables (None: unset)."""
    full = {**os.environ, **env, "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    full = {key: value for key, value in full.items() if value is not None}
    return subprocess.Popen([sys.executable, "-m", "llm_jax", *args], cwd=ROOT, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finished(process, timeout=600):
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


@pytest.fixture(scope="module")
def corpora(gcs, tmp_path_factory):
    """The same corpus and tokenizer made on local disk and in the bucket; the bucket's
    curation report."""
    from llm_jax.data.curate import curate
    from llm_jax.data.tokenizer_training import train_from_config

    local = tmp_path_factory.mktemp("local")
    made = {}
    for root in (str(local), f"gs://{BUCKET}/corpus"):
        config = load_config("tiny", [f"run_dir={root}", *CORPUS])
        made[root] = curate(config, progress=False)
        train_from_config(config, progress=False)
    return str(local), f"gs://{BUCKET}/corpus", made[f"gs://{BUCKET}/corpus"]


def data_args(root):
    return [f"data.curated_dir={root}/curated", f"tokenizer.path={root}/tokenizer/tokenizer.model"]


def test_a_corpus_curated_into_gs_is_the_local_one(corpora):
    from llm_jax.data.corpus import CorpusSource
    from llm_jax.data.tokenizer import load_tokenizer

    local, remote = (storage.path(root) for root in corpora[:2])
    texts = []
    for root in (local, remote):
        source = CorpusSource(root / "curated")
        texts.append([source[i] for i in range(len(source))])
    assert texts[0] == texts[1] and len(texts[0]) > 20
    report = json.loads((remote / "curated" / "report.json").read_text())
    assert report["corpus"] == f"gs://{BUCKET}/corpus/curated" and report["complete"]
    assert (remote / "curated" / "rejected").is_dir()
    assert not (remote / "curated" / "_work" / "logs").exists()  # intermediate files stay local
    tokenizers = [load_tokenizer(root / "tokenizer" / "tokenizer.model") for root in (local, remote)]
    pieces = [[t.id_to_token(i) for i in range(t.vocab_size)] for t in tokenizers]
    assert pieces[0] == pieces[1]
    assert (remote / "tokenizer" / "hf" / "tokenizer.json").is_file()


def test_curating_again_into_gs_reads_the_prepared_corpus(corpora):
    from llm_jax.data.curate import curate

    import shutil

    staging = Path(os.environ["LLM_JAX_CACHE"]) / "staging"
    shutil.rmtree(staging)  # where a curation into the bucket works
    report = curate(load_config("tiny", [f"run_dir={corpora[1]}", *CORPUS]), progress=False)
    assert report == corpora[2]  # the bucket's own report, down to its time: nothing curated
    assert not staging.exists()


def losses(run_dir):
    from llm_jax.train.metrics import read_metrics

    return {r["step"]: r["loss"] for r in read_metrics(run_dir)}


@pytest.fixture(scope="module")
def runs(gcs, corpora, tmp_path_factory):
    """A local run, and the same run in the bucket killed with SIGKILL after a checkpoint and
    started again."""
    from llm_jax import checkpoint

    local_run = tmp_path_factory.mktemp("run")
    train = ["train", "--config", "tiny", "--no-progress", *MODEL, *RUN]
    finished(run_cli([*train, f"run_dir={local_run}", *data_args(corpora[0])], gcs))
    remote_run = f"gs://{BUCKET}/runs/one"
    args = [*train, f"run_dir={remote_run}", *data_args(corpora[1])]
    process = run_cli(args, gcs)
    deadline = time.time() + 300
    manager = checkpoint.checkpoint_manager(remote_run)
    while time.time() < deadline and (manager.reload() or manager.latest_step() or 0) < 20:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    output = finished(run_cli(args, gcs))
    return str(local_run), remote_run, output


def test_a_gs_run_killed_and_resumed_logs_the_local_runs_losses(runs):
    local_run, remote_run, output = runs
    # The kill may land after step 60's loss is logged, while its checkpoint is still being
    # written: what must hold is that the restart resumed from an earlier checkpoint.
    resumed = re.search(rf"resumed {re.escape(remote_run)} at step (\d+)", output)
    assert resumed and 20 <= int(resumed[1]) < STEPS, output
    after = losses(remote_run)
    assert sorted(after) == list(range(1, STEPS + 1))
    assert after == losses(local_run)  # bitwise: the same batches and the same state
    remote = storage.path(remote_run)
    assert (remote / "config.yaml").is_file() and (remote / "tokenizer" / "tokenizer.model").is_file()
    assert list((remote / "tensorboard").glob("events.out.tfevents.*"))
    steps = sorted(int(p.name) for p in (remote / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [STEPS - 20, STEPS]


def test_eval_generate_and_export_read_a_gs_checkpoint_like_a_local_one(runs, gcs, tmp_path,
                                                                          real_data):
    from safetensors.numpy import load_file

    local_run, remote_run, _ = runs
    text = real_data / "tinyshakespeare.txt"
    results, texts = [], []
    for run in (local_run, remote_run):
        out = f"{run}/eval.json"
        finished(run_cli(["eval", "--checkpoint", run, "--task", "perplexity", "--data", str(text),
                          "--limit", "4", "--output", out], gcs, devices=1))
        results.append({k: v for k, v in json.loads(storage.path(out).read_text()).items()
                        if k != "checkpoint"})
        texts.append(finished(run_cli(["generate", "--checkpoint", run, "--prompt", "def",
                                       "--max-new-tokens", "12", "--temperature", "0"],
                                      gcs, devices=1)).splitlines()[-1])
    assert results[0] == results[1] and np.isfinite(results[0]["token_perplexity"])
    assert texts[0] == texts[1]
    exported = []
    for name, run in (("local", local_run), ("remote", remote_run)):
        finished(run_cli(["export-hf", "--checkpoint", run, "--out", str(tmp_path / name)], gcs))
        exported.append(load_file(tmp_path / name / "model.safetensors"))
    assert exported[0].keys() == exported[1].keys()
    assert all(np.array_equal(exported[0][k], exported[1][k]) for k in exported[0])
    assert (tmp_path / "remote" / "tokenizer.json").is_file()


def one_line_error(process) -> str:
    output, _ = process.communicate(timeout=300)
    lines = [line for line in output.splitlines() if "error:" in line]
    assert process.returncode != 0 and len(lines) == 1, output
    assert "Traceback" not in output, output
    return lines[0]


def test_a_missing_bucket_a_wrong_path_and_no_credentials_are_one_line_errors(gcs, corpora,
                                                                              tmp_path):
    line = one_line_error(run_cli(["train", "--config", "tiny", "--no-progress", *MODEL,
                                   "run_dir=gs://no-such-bucket/run", *data_args(corpora[1])],
                                  gcs, devices=1))
    assert "gs://no-such-bucket/run" in line and "does not exist" in line
    line = one_line_error(run_cli(["generate", "--checkpoint", f"gs://{BUCKET}/runs/nothing",
                                   "--prompt", "x"], gcs, devices=1))
    assert f"gs://{BUCKET}/runs/nothing" in line and "does not exist" in line
    no_credentials = {"STORAGE_EMULATOR_HOST": None, "TENSORSTORE_GCS_HTTP_URL": None,
                      "GOOGLE_APPLICATION_CREDENTIALS": None, "HOME": str(tmp_path),
                      "GCE_METADATA_HOST": "127.0.0.1:9", "GCE_METADATA_IP": "127.0.0.1:9"}
    line = one_line_error(run_cli(["generate", "--checkpoint", f"gs://{BUCKET}/runs/one",
                                   "--prompt", "x"], no_credentials, devices=1))
    assert f"gs://{BUCKET}/runs/one" in line and "credentials" in line


def test_sources_post_data_and_eval_documents_read_gs_like_local_files(gcs, real_data, tmp_path):
    """data.source (a glob, a directory, jsonl:), post.data and eval data, gzip included."""
    import gzip
    import shutil

    from llm_jax.data.records import SkipReport, read_records
    from llm_jax.data.sources import open_source
    from llm_jax.eval.documents import read_documents

    local = tmp_path / "data"
    (local / "web").mkdir(parents=True)
    shutil.copy(real_data / "clean-prose.jsonl", local / "web" / "prose.jsonl")
    with gzip.open(local / "web" / "junk.jsonl.gz", "wb") as f:
        f.write((real_data / "web-junk.jsonl").read_bytes())
    shutil.copy(real_data / "tinyshakespeare.txt", local / "play.txt")
    remote = storage.publish(local, f"gs://{BUCKET}/data")

    def read(root):
        config = load_config("tiny", [f"data.source={root}/web/*.jsonl*"]).data
        by_glob = [d.text for d in open_source(config).read_all()[0]]
        config = load_config("tiny", [f"data.source={root}"]).data
        by_dir = sorted(d.text for d in open_source(config).read_all()[0])
        report = SkipReport("sft")
        post = [r.value for r in read_records(f"{root}/web/prose.jsonl,{root}/web/*.gz", report)]
        documents = read_documents(f"{root}/play.txt") + read_documents(f"jsonl:{root}/web/*.jsonl")
        return by_glob, by_dir, post, documents

    here, there = read(local), read(remote)
    assert here == there
    by_glob, by_dir, post, documents = there
    assert len(by_glob) == 33 + 13 and len(post) == 33 + 13 and len(documents) == 1 + 33
    assert len(by_dir) > len(by_glob)  # the play too
