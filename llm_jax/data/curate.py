"""`llm-jax curate`: raw source -> filtered, deduplicated, PII-scrubbed corpus + report.json.

The run is a chain of datatrove stages, run by the datatrove executor `curate.executor` names:
`local` (this machine's processes), `ray` (the tasks of a Ray cluster: RAY_ADDRESS, or a new
local one) or `slurm` (one job array per stage, each depending on the one before; the command
returns once they are submitted, and run again after they finish it writes the corpus
metadata). The stages are the same for all three; a cluster needs its nodes to share the
output directory's file system:

    filter       read the source, join hard-wrapped paragraphs, apply the published quality
                 filters and the toxicity filter to the documents of the kinds they suit, write
                 signatures of the first dedup
    exact ...    datatrove's exact dedup: find duplicate texts, then drop all but the first
    minhash ...  datatrove's MinHash dedup (word 5-grams, 14 bands x 8 hashes): buckets,
                 clusters, then drop all but one document per cluster
    last stage   PII scrubbing, then one ArrayRecord shard per task (see `corpus.py`)

Layout of the output directory (`data.curated_dir`, default `<run_dir>/curated`):

    curated-train.array_record-0000k-of-0000n   the corpus, a TFDS dataset with its metadata
    dataset_info.json, features.json            written last: their presence means complete
    report.json                                 each step's documents and bytes in and out, and
                                                what it alone removed (`removed_only_here`)
    rejected/<step>.jsonl                       a sample of what each step removed
    _work/                                      intermediate files, logs, per-task completions

Every stage is split into `curate.tasks` tasks; a task that finished is skipped when the run is
started again, so an interrupted run resumes. The settings are recorded in `_work/settings.json`
when curate takes the directory; a directory with other settings, or one curate did not make,
is never deleted unless `force` (`llm-jax curate --force`) asks to replace it (`curate_output.py`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from datatrove.executor import LocalPipelineExecutor, RayPipelineExecutor, SlurmPipelineExecutor
from datatrove.pipeline.dedup import (
    ExactDedupFilter,
    ExactDedupSignature,
    ExactFindDedups,
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig

from llm_jax import storage
from llm_jax.config import CURATE_FILTERS, CURATE_FORMATTERS, CURATE_NORMALIZERS, Config
from llm_jax.data import corpus
from llm_jax.data.corpus import curated_dir, curation_settings
from llm_jax.data.curate_output import WORK, prepare_output, resumes
from llm_jax.data.curate_steps import (
    CorpusWriter,
    KindFilter,
    KindFormatter,
    RankFileReader,
    SampleWriter,
    SourceReader,
    Tally,
    intermediate_writer,
)
from llm_jax.data.curate_report import (
    ReportedStep,
    format_report,
    merge_samples,
    per_rank_stat,
    stage_stats,
    step_entry,
)
from llm_jax.data.filters import make_filter, steps_by_kind
from llm_jax.data.sources import ReadProblems, open_source
from llm_jax.errors import UserError

REPORT_FILE = "report.json"


def document_text(doc: Any) -> str:
    """What exact dedup compares (the return annotation tells datatrove to hash a str)."""
    return doc.text


@dataclasses.dataclass
class Stage:
    name: str
    pipeline: list[Any]
    tasks: int
    workers: int
    logs: Path
    documents_flow: bool = True  # False for dedup stages that only read signatures


class _Plan:
    """Builds the stages, putting a Tally around every reported step."""

    def __init__(self, work: Path, tasks: int, workers: int, samples: int) -> None:
        self.work, self.tasks, self.workers, self.samples = work, tasks, workers, samples
        self.stages: list[Stage] = []
        self.reported: list[ReportedStep] = []

    def stage(self, name: str, reader: Any) -> None:
        logs = self.work / "logs" / f"{len(self.stages):02d}-{name.replace(' ', '-')}"
        self.stages.append(Stage(name, [reader, Tally(f"{name}: in")], self.tasks, self.workers, logs))

    def global_stage(self, name: str, step: Any, tasks: int) -> None:
        logs = self.work / "logs" / f"{len(self.stages):02d}-{name.replace(' ', '-')}"
        self.stages.append(Stage(name, [step], tasks, 1, logs, documents_flow=False))

    def step(self, name: str, step: Any, applies_to: tuple[str, ...]) -> None:
        pipeline = self.stages[-1].pipeline
        rejected = getattr(step, "exclusion_writer", None)
        rejected_dir = str(rejected.output_folder.path) if rejected is not None else None
        pipeline.extend([step, Tally(name)])
        n = len(pipeline)
        self.reported.append(ReportedStep(name, len(self.stages) - 1, n - 3, n - 1, n - 2,
                                          applies_to, rejected_dir))

    def append(self, step: Any) -> None:
        self.stages[-1].pipeline.append(step)

    def rejected(self, name: str) -> Any:
        return SampleWriter(str(self.work / "rejected" / name), self.samples)


@dataclasses.dataclass
class _Dedup:
    """One of datatrove's dedup methods as our plan uses it: a signature step at the end of a
    stage, global stages over all signatures, and a filter step at the start of the next stage."""

    name: str
    signature: Any
    global_stages: list[tuple[str, Any, int]]  # (name, step, tasks)
    make_filter: Callable[[Any], Any]  # exclusion writer -> filter step


def _dedups(config: Config, work: Path) -> list[_Dedup]:
    c = config.curate
    dedups = []
    if c.exact_dedup:
        cfg = ExactDedupConfig(content_getter=document_text)
        sigs, dups = str(work / "exact" / "signatures"), str(work / "exact" / "duplicates")
        dedups.append(_Dedup(
            "exact_dedup", ExactDedupSignature(sigs, config=cfg),
            [("exact find duplicates", ExactFindDedups(sigs, dups, config=cfg), 1)],
            lambda writer: ExactDedupFilter(dups, config=cfg, exclusion_writer=writer)))
    if c.minhash:
        mcfg = MinhashConfig(n_grams=c.minhash_ngrams, num_buckets=c.minhash_buckets,
                             hashes_per_bucket=c.minhash_hashes_per_bucket)
        sigs, buckets, clusters = (str(work / "minhash" / d) for d in ("signatures", "buckets", "clusters"))
        dedups.append(_Dedup(
            "minhash", MinhashDedupSignature(sigs, config=mcfg),
            [("minhash buckets", MinhashDedupBuckets(sigs, buckets, config=mcfg), c.minhash_buckets),
             ("minhash clusters", MinhashDedupCluster(buckets, clusters, config=mcfg), 1)],
            lambda writer: MinhashDedupFilter(clusters, exclusion_writer=writer)))
    return dedups


def build_plan(config: Config, out: Path, source: Any) -> _Plan:
    """All stages of the run, in order."""
    c = config.curate
    work = out / WORK
    workers = c.workers or min(c.tasks, os.cpu_count() or 1)
    plan = _Plan(work, c.tasks, workers, c.rejected_samples)
    kinds = steps_by_kind(c)

    plan.stage("filter", SourceReader(source, str(work / "problems"), c.max_documents))
    for name in CURATE_NORMALIZERS:
        if name in kinds:
            plan.step(name, KindFormatter(name, make_filter(name, c), kinds[name]), tuple(kinds[name]))
    quality = [name for name in CURATE_FILTERS if name in kinds]
    for i, name in enumerate(quality):
        later = [KindFilter(other, make_filter(other, c), kinds[other]) for other in quality[i + 1:]]
        step = KindFilter(name, make_filter(name, c), kinds[name], plan.rejected(name), later)
        plan.step(name, step, tuple(kinds[name]))
    for i, dedup in enumerate(_dedups(config, work)):
        handoff = str(work / "documents" / f"{i}-{dedup.name}")
        plan.append(intermediate_writer(handoff))
        plan.append(dedup.signature)
        for name, step, tasks in dedup.global_stages:
            plan.global_stage(name, step, tasks)
        plan.stage(dedup.name, RankFileReader(handoff))
        plan.step(dedup.name, dedup.make_filter(plan.rejected(dedup.name)), ("prose", "code"))
    for name in CURATE_FORMATTERS:
        if name in kinds:
            plan.step(name, KindFormatter(name, make_filter(name, c), kinds[name]), tuple(kinds[name]))
    plan.append(CorpusWriter(str(out)))
    return plan


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """datatrove's task logs and inner progress bars go to its log files, not the console.

    Tasks run in this process write to a muted `sys.stderr` (our own bar holds the real one);
    worker processes inherit TQDM_DISABLE, which tqdm reads when it is first imported there.
    Errors still surface: a failing task raises its exception here.
    """
    from loguru import logger

    previous_env, previous_stderr = os.environ.get("TQDM_DISABLE"), sys.stderr
    os.environ["TQDM_DISABLE"] = "1"
    logger.disable("datatrove.executor")
    with open(os.devnull, "w") as devnull:
        sys.stderr = devnull
        try:
            yield
        finally:
            sys.stderr = previous_stderr
            logger.enable("datatrove.executor")
            if previous_env is None:
                os.environ.pop("TQDM_DISABLE", None)
            else:
                os.environ["TQDM_DISABLE"] = previous_env


class QuietExecutor(LocalPipelineExecutor):
    """Runs every task as a non-zero local rank: datatrove then logs only errors to the console
    (full logs still go to `<logs>/logs/`)."""

    def _launch_run_for_rank(self, rank: int, ranks_q: Any, completed: Any = None,
                             completed_lock: Any = None) -> Any:
        from loguru import logger

        logger.disable("datatrove.executor")  # "n/N tasks completed", in worker processes too
        return super()._launch_run_for_rank(rank, ranks_q, completed, completed_lock)

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1) -> Any:
        return super()._run_for_rank(rank, local_rank=1, node_rank=node_rank)


def _executor(config: Config, stage: Stage) -> Any:
    """This machine's processes (`local`), or the tasks of a Ray cluster (`ray`)."""
    if config.curate.executor == "ray":
        return RayPipelineExecutor(stage.pipeline, tasks=stage.tasks,
                                   workers=config.curate.workers or -1,
                                   cpus_per_task=config.curate.cpus_per_task,
                                   logging_dir=str(stage.logs), skip_completed=True)
    return QuietExecutor(stage.pipeline, tasks=stage.tasks, workers=min(stage.workers, stage.tasks),
                         logging_dir=str(stage.logs), skip_completed=True)


def _connect_ray() -> None:
    """The cluster that RAY_ADDRESS (or `ray start` on this machine) names, else a new local
    one with this machine's CPUs."""
    import logging

    import ray

    if not ray.is_initialized():
        ray.init(logging_level=logging.WARNING, log_to_driver=False, include_dashboard=False)


def _run_in_turn(config: Config, plan: _Plan, progress: bool) -> str | None:
    """Runs the stages one after another, each to its end; returns the name of the stage that
    left no documents (the later ones are not run), if one did."""
    if config.curate.executor == "ray":
        _connect_ray()
    with _Progress(plan.stages, progress, sys.stderr) as bar, _quiet():
        for index, stage in enumerate(plan.stages):
            bar.current = stage.name
            _executor(config, stage).run()
            if _left_empty(plan, index):
                return stage.name
    return None


def _slurm_executors(config: Config, plan: _Plan) -> list[SlurmPipelineExecutor]:
    """One job array per stage, each depending on the one before (datatrove's own chaining)."""
    c = config.curate
    executors: list[SlurmPipelineExecutor] = []
    for index, stage in enumerate(plan.stages):
        executors.append(SlurmPipelineExecutor(
            stage.pipeline, tasks=stage.tasks, time=c.slurm_time, partition=c.slurm_partition,
            cpus_per_task=c.cpus_per_task, workers=c.workers or -1,
            job_name=f"curate-{index:02d}-{stage.name.replace(' ', '-')}",
            logging_dir=str(stage.logs), depends=executors[-1] if executors else None,
            skip_completed=True))
    return executors


def _run_on_slurm(config: Config, plan: _Plan, progress: bool) -> bool:
    """Submits the stages' unfinished tasks as Slurm jobs; True when every task is done (a
    cluster runs the jobs later: curate is run again, with the same settings, to finish).
    datatrove's submission log goes to its log files, like its task logs."""
    executors = _slurm_executors(config, plan)
    if any(executor.get_incomplete_ranks() for executor in executors):
        with _Progress(plan.stages, progress, sys.stderr), _quiet():
            executors[-1].run()
    return not any(executor.get_incomplete_ranks() for executor in _slurm_executors(config, plan))


def _left_empty(plan: _Plan, index: int) -> bool:
    """Whether stage `index` passes documents on and none came through it."""
    return plan.stages[index].documents_flow and _stage_documents(plan, index) == 0


def _first_empty_stage(plan: _Plan) -> str | None:
    return next((stage.name for index, stage in enumerate(plan.stages)
                 if _left_empty(plan, index)), None)


class _Progress:
    """A tqdm bar over all tasks of all stages, fed by datatrove's completion markers."""

    def __init__(self, stages: list[Stage], enabled: bool, stream: Any) -> None:
        from tqdm import tqdm

        self.stages = stages
        self.bar = tqdm(total=sum(s.tasks for s in stages), unit="task", desc="curate",
                        disable=not enabled, file=stream, dynamic_ncols=True, mininterval=0.5)
        self.current = stages[0].name
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _done(self) -> int:
        done = 0
        for stage in self.stages:
            marks = stage.logs / "completions"
            done += len(os.listdir(marks)) if marks.is_dir() else 0
        return done

    def _poll(self) -> None:
        while not self.stop.wait(0.5):
            self.refresh()

    def refresh(self) -> None:
        self.bar.set_description(f"curate [{self.current}]", refresh=False)
        self.bar.update(self._done() - self.bar.n)

    def __enter__(self) -> "_Progress":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()
        self.refresh()
        self.bar.close()


def _stage_documents(plan: _Plan, index: int) -> int:
    """Documents that made it through the last reported step of a stage."""
    stats = stage_stats(plan.stages[index].logs)
    last = max([s.after for s in plan.reported if s.stage == index], default=1)
    return int(stats[last].get("documents", 0)) if len(stats) > last else 0


def curate(config: Config, progress: bool = True, force: bool = False) -> dict[str, Any]:
    """Runs (or resumes) curation for `config`; returns the report also saved as report.json.

    The output directory is resumed when an earlier run with the same settings made it; one
    that holds anything else raises UserError unless `force` replaces it. Raises UserError
    when the source holds nothing usable or the filters leave nothing; the report is still
    written (with "complete": false) so that a person can see which step did it.
    """
    if config.data.mixture:
        raise UserError("a data.mixture is curated source by source: `llm-jax curate` does "
                        "that (llm_jax.data.mixture.member_configs)")
    started = time.time()
    out = curated_dir(config)
    source = open_source(config.data)
    resumed = prepare_output(out, curation_settings(config), force)
    if not storage.is_remote(out):
        return _curate_into(config, out, out, source, resumed, progress, started)
    if resumed and corpus.is_complete(out):  # prepared once, by this or another machine
        return json.loads((out / REPORT_FILE).read_text())
    staging = storage.cache_root() / "staging" / str(out)[len(storage.SCHEME):]
    prepare_output(staging, curation_settings(config), force=not resumes(staging, curation_settings(config)))
    try:
        report = _curate_into(config, staging, out, source, resumed, progress, started)
    except UserError:  # the report and the rejected samples say why
        storage.publish(staging, out, exclude=(WORK,))
        raise
    if report["complete"]:
        storage.publish(staging, out, last=(corpus.INFO_FILE,), exclude=(WORK,))
    return report


def _curate_into(config: Config, out: Path, shown: storage.AnyPath, source: Any, resumed: bool,
                 progress: bool, started: float) -> dict[str, Any]:
    """Curates into the local directory `out`, which the report and messages call `shown` (the
    `gs://` directory it will be published to, or `out` itself)."""
    plan = build_plan(config, out, source)
    if config.curate.executor != "slurm":
        empty_at = _run_in_turn(config, plan, progress)
    elif _run_on_slurm(config, plan, progress):
        empty_at = _first_empty_stage(plan)
    else:
        return {"corpus": str(shown), "complete": False, "submitted": len(plan.stages),
                "logs": str(out / WORK / "logs")}
    report = _build_report(config, plan, out, shown, source.spec, resumed, time.time() - started,
                           empty_at)
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    problems = ReadProblems()
    problems.update(report["read_problems"])
    if report["documents_in"] == 0:
        examples = "".join(f"\n  {example}" for example in problems.examples[:5])
        raise UserError(f"nothing usable in {source.spec}: {problems.summary() or 'no text found'}{examples}")
    if empty_at is not None or report["documents_out"] == 0:
        last = next((s["name"] for s in reversed(report["steps"]) if s["documents_in"]), "the first step")
        skipped = f" (unusable input skipped: {problems.summary()})" if problems.counts else ""
        raise UserError(
            f"the corpus is empty after curation: {last} removed the last documents of "
            f"{report['documents_in']} read{skipped}. See {shown / REPORT_FILE} and "
            f"{shown / 'rejected'}; loosen curate.prose_steps / curate.code_steps for this source."
        )
    final = plan.stages[-1]
    position = len(final.pipeline) - 1
    lengths = per_rank_stat(final.logs, position, "documents", final.tasks)
    corpus.write_metadata(out, lengths, report["bytes_out"])
    return report


def _build_report(config: Config, plan: _Plan, out: Path, shown: storage.AnyPath, spec: str,
                  resumed: bool, seconds: float, empty_at: str | None) -> dict[str, Any]:
    stats = [stage_stats(stage.logs) for stage in plan.stages]
    problems = ReadProblems()
    for path in sorted((out / WORK / "problems").glob("*.json")):
        problems.update(json.loads(path.read_text()))
    first = stats[0][1] if len(stats[0]) > 1 else {}
    steps = []
    for step in plan.reported:
        if len(stats[step.stage]) <= step.after:
            break  # the run stopped before this stage
        sample = None
        if step.rejected_dir:
            sample = merge_samples(step.rejected_dir, out / "rejected" / f"{step.name}.jsonl",
                                   config.curate.rejected_samples)
        steps.append(step_entry(step, stats[step.stage], sample and str(Path(sample).relative_to(out))))
    last = steps[-1] if steps else {"documents_out": int(first.get("documents", 0)),
                                    "bytes_out": int(first.get("bytes", 0))}
    return {
        "source": spec,
        "corpus": str(shown),
        "complete": empty_at is None and bool(last["documents_out"]),
        "documents_in": int(first.get("documents", 0)),
        "documents_out": int(last["documents_out"]) if empty_at is None else 0,
        "bytes_in": int(first.get("bytes", 0)),
        "bytes_out": int(last["bytes_out"]) if empty_at is None else 0,
        "steps": steps,
        "read_problems": problems.to_dict(),
        "shards": [corpus.shard_name(i, config.curate.tasks) for i in range(config.curate.tasks)],
        "resumed": resumed,
        "seconds": round(seconds, 1),
        "settings": curation_settings(config),
    }


__all__ = ["curate", "curated_dir", "format_report"]
