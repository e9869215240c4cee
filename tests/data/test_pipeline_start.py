"""Starting the pretraining input pipeline never hangs, however its reader threads are scheduled.

Grain's reader threads used to import TFDS on their first record, all at once, and could deadlock
on Python's import locks: training then waited for its first batch forever. Imports and first
uses happen once per process, so each start here is a fresh Python process that only opens the
pipeline (the real one, with the reader threads of training) over a small curated corpus and
takes its first batch; many starts run, a few at a time, each with a time limit after which it
dumps the stack of every thread. The first batch must also be the one this process makes.
"""

from __future__ import annotations

import concurrent.futures
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llm_jax.config import load_config
from llm_jax.data import corpus
from llm_jax.data.pipeline import make_batch_iterator
from llm_jax.data.tokenizer import load_tokenizer
from llm_jax.data.tokenizer_training import train_tokenizer, training_lines

STARTS = 30
AT_ONCE = 4
# A start takes seconds (under 20 on a loaded 2-core machine). Even if every start hung, the
# STARTS / AT_ONCE rounds of LIMIT_S + KILL_S stay within CI's 900 s limit for one test, so
# the test still reports which starts hung.
LIMIT_S = 90
KILL_S = 15  # after LIMIT_S a start dumps its stacks and exits; this kills it if it cannot

FIRST_BATCH = """
import faulthandler, json, sys
faulthandler.dump_traceback_later(float(sys.argv[1]), exit=True)
from llm_jax.config import load_config
from llm_jax.data.pipeline import make_batch_iterator
from llm_jax.data.tokenizer import load_tokenizer
config = load_config("tiny", sys.argv[3:])
iterator = make_batch_iterator(config, load_tokenizer(sys.argv[2]), process_index=0, process_count=1)
print(json.dumps({key: value.tolist() for key, value in next(iterator).items()}))
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A curated corpus in two ArrayRecord shards and a tokenizer trained on it."""
    rng = random.Random(0)
    words = "the of and to in is that for it as with was on be by this are or from at".split()
    texts = [" ".join(rng.choices(words, k=rng.randint(3, 300))) + "." for _ in range(200)]
    root = tmp_path_factory.mktemp("start")
    out = root / "curated"
    out.mkdir()
    halves = [texts[:100], texts[100:]]
    for shard, part in enumerate(halves):
        records = [corpus.encode_record(t, f"{shard}-{i}", "prose") for i, t in enumerate(part)]
        corpus.write_shard(out / corpus.shard_name(shard, len(halves)), records)
    corpus.write_metadata(out, [len(h) for h in halves], sum(len(t) for t in texts))
    train_tokenizer(training_lines(texts, 4096), root / "tokenizer.model", vocab_size=300)
    return root


def _overrides(run_dir: Path) -> list[str]:
    return [f"run_dir={run_dir}", "data.seq_len=32", "train.batch_size=4"]


def _start(run_dir: Path, number: int) -> tuple[int, subprocess.CompletedProcess | None]:
    command = [sys.executable, "-c", FIRST_BATCH, str(LIMIT_S), str(run_dir / "tokenizer.model"),
               *_overrides(run_dir)]
    try:
        return number, subprocess.run(command, capture_output=True, text=True,
                                      timeout=LIMIT_S + KILL_S)
    except subprocess.TimeoutExpired:
        return number, None


def _failure(number: int, result: subprocess.CompletedProcess | None) -> str:
    if result is None:
        return f"start {number} of {STARTS} hung and was killed after {LIMIT_S + KILL_S} s"
    what = "hung" if "Timeout (" in result.stderr else f"failed (exit {result.returncode})"
    return f"start {number} of {STARTS} {what}; its stderr ends:\n{result.stderr[-6000:]}"


def test_fresh_processes_always_get_the_first_batch(run_dir: Path) -> None:
    config = load_config("tiny", _overrides(run_dir))
    expected = next(make_batch_iterator(config, load_tokenizer(run_dir / "tokenizer.model"),
                                        process_index=0, process_count=1))
    with concurrent.futures.ThreadPoolExecutor(AT_ONCE) as pool:
        results = list(pool.map(lambda number: _start(run_dir, number), range(1, STARTS + 1)))
    failures = [_failure(n, r) for n, r in results if r is None or r.returncode != 0]
    assert not failures, "\n\n".join(failures)
    for number, result in results:
        batch = json.loads(result.stdout.strip().splitlines()[-1])
        assert sorted(batch) == sorted(expected), number
        for key, value in expected.items():
            np.testing.assert_array_equal(np.asarray(batch[key], value.dtype), value,
                                          err_msg=f"start {number}: {key}")
