"""`curate.executor=ray|slurm`: datatrove's own executors give the local executor's corpus
and report.

Ray: a local cluster of 2 worker CPUs that the test starts. Slurm: one job array per stage
chained by dependencies; `sbatch`, `srun` and `scontrol` here are stand-ins that run a job's
array tasks on this machine as a cluster would (SLURM_ARRAY_TASK_ID, SLURM_NODELIST, --export,
the job's output file), one job after another, so the chain has finished when `sbatch` returns.
"""

import json
import os
import stat
import sys
from pathlib import Path

from llm_jax.config import load_config

SBATCH = r'''#!/usr/bin/env python3
import os, re, subprocess, sys
from pathlib import Path

counter = Path(__file__).with_name("job_id")
job = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(job))
script = sys.argv[-1]
env = dict(os.environ, SLURM_NODELIST="localhost", SLURM_JOB_ID=str(job))
for arg in sys.argv[1:-1]:
    if arg.startswith("--export=ALL,"):
        env.update(pair.split("=", 1) for pair in arg[len("--export=ALL,"):].split(","))
text = Path(script).read_text()
array = re.search(r"^#SBATCH --array=(\d+)-(\d+)", text, re.M)
output = re.search(r"^#SBATCH --output=(.+)$", text, re.M)
for task in range(int(array[1]), int(array[2]) + 1) if array else [0]:
    log = output[1].replace("%A", str(job)).replace("%a", str(task)) if output else os.devnull
    with open(log, "w") as out:
        subprocess.run(["bash", script], check=True, stdout=out, stderr=subprocess.STDOUT,
                       env={**env, "SLURM_ARRAY_TASK_ID": str(task)} if array else env)
print(f"Submitted batch job {job}")
'''

SRUN = """#!/bin/bash
while [ $# -gt 0 ] && [ "$1" != launch_pickled_pipeline ]; do shift; done
exec "$@"
"""

SCONTROL = """#!/bin/sh
[ "$1 $2" = "show hostnames" ] && echo "$3" | tr , '\\n'
"""

SETTINGS = ["curate.max_documents=80", "curate.tasks=2", "curate.minhash_buckets=4"]


def _stand_ins(directory: Path) -> str:
    directory.mkdir()
    for name, text in (("sbatch", SBATCH), ("srun", SRUN), ("scontrol", SCONTROL)):
        path = directory / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return f"{directory}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"


def _curated(tmp_path: Path, executor: str) -> tuple[dict, list[str]]:
    from llm_jax.data.corpus import CorpusSource
    from llm_jax.data.curate import curate

    config = load_config("tiny", [f"run_dir={tmp_path / executor}", *SETTINGS,
                                  f"curate.executor={executor}"])
    report = curate(config, progress=False)
    source = CorpusSource(tmp_path / executor / "curated")
    return report, [source[i] for i in range(len(source))]


def _same_curation(local: tuple[dict, list[str]], other: tuple[dict, list[str]]) -> None:
    (local_report, local_texts), (report, texts) = local, other
    assert texts == local_texts and len(texts) > 20
    assert report["steps"] == local_report["steps"] and report["shards"] == local_report["shards"]
    assert report["settings"] == local_report["settings"]  # the executor is no corpus setting
    written = json.loads(Path(report["corpus"], "report.json").read_text())
    assert written["documents_out"] == local_report["documents_out"]


def test_ray_curation_gives_the_local_corpus_and_report(tmp_path):
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        _same_curation(_curated(tmp_path, "local"), _curated(tmp_path, "ray"))
    finally:
        ray.shutdown()


def test_slurm_curation_gives_the_local_corpus_and_report(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _stand_ins(tmp_path / "bin"))
    _same_curation(_curated(tmp_path, "local"), _curated(tmp_path, "slurm"))
    assert int((tmp_path / "bin" / "job_id").read_text()) >= 2 * 6  # each stage and its stats
    launched = list((tmp_path / "slurm" / "curated" / "_work" / "logs").glob("*/launch_script.slurm"))
    assert len(launched) == 6 and all("#SBATCH --array=" in p.read_text() for p in launched)


QUEUE = r'''#!/usr/bin/env python3
import json, shutil, sys
from pathlib import Path

queue = Path(__file__).with_name("queue")
queue.mkdir(exist_ok=True)
number = len(list(queue.glob("*.json")))
shutil.copy(sys.argv[-1], queue / f"{number:03d}.sh")
(queue / f"{number:03d}.json").write_text(json.dumps(sys.argv[1:-1]))
print(f"Submitted batch job {100 + number}")
'''


def test_a_slurm_curation_still_running_says_so_and_finishes_when_run_again(tmp_path, monkeypatch):
    """A real `sbatch` returns at once: curate says what it submitted, and the same command run
    after the jobs have finished writes the corpus metadata without submitting anything."""
    import subprocess

    from llm_jax.data import corpus
    from llm_jax.data.curate import curate

    bin_dir = tmp_path / "bin"
    monkeypatch.setenv("PATH", _stand_ins(bin_dir))
    (bin_dir / "sbatch").rename(bin_dir / "run-now")
    (bin_dir / "sbatch").write_text(QUEUE)
    (bin_dir / "sbatch").chmod(0o755)
    config = load_config("tiny", [f"run_dir={tmp_path}", *SETTINGS, "curate.executor=slurm"])
    submitted = curate(config, progress=False)
    assert submitted["submitted"] == 6 and not submitted["complete"]
    assert not corpus.is_complete(tmp_path / "curated")
    jobs = sorted((bin_dir / "queue").glob("*.json"))
    assert len(jobs) == 2 * 6  # each stage's array, and its stats merge
    for job in jobs:  # the cluster runs them, in the order their dependencies allow
        args = json.loads(job.read_text())
        subprocess.run([bin_dir / "run-now", *args, job.with_suffix(".sh")], check=True,
                       capture_output=True)
    (bin_dir / "sbatch").write_text("#!/bin/sh\nexit 1\n")  # nothing may be submitted now
    finished = curate(config, progress=False)
    assert finished["complete"] and corpus.is_complete(tmp_path / "curated")
    assert finished["documents_out"] > 20
