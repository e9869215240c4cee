"""Training an ensemble (`ensemble.py`): one loop, K members' data, metrics and models.

Each member reads its own data (its seed's order) and writes what a single run writes in its
own `run_dir`: config, tokenizer, `metrics.jsonl`, and at the end its trained parameters as a
checkpoint that `generate`, `eval`, `export-hf` and `train.init_from` read. The ensemble's own
directory holds the resumable checkpoints of the whole stacked state, every member's data
position with it, and `members.json`, which a resumed ensemble must match.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from typing import Any, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

from llm_jax import checkpoint, storage
from llm_jax.config import Config, save_config
from llm_jax.errors import UserError
from llm_jax.parallel.preemption import Preemption
from llm_jax.train.ensemble import OBJECTIVE_EVALS, EnsembleTraining, build_ensemble
from llm_jax.train.loop import eval_metrics
from llm_jax.train.metrics import MetricsLogger
from llm_jax.train.objective_eval import objective_metrics, to_global

MEMBERS_FILE = "members.json"


def _members_record(configs: Sequence[Config]) -> list[dict]:
    """Each member's run directory and a digest of its whole config."""
    def digest(config: Config) -> str:
        text = json.dumps(dataclasses.asdict(config), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    return [{"run_dir": str(c.run_dir), "config": digest(c)} for c in configs]


def _check_members_record(ensemble_dir: storage.AnyPath, configs: Sequence[Config]) -> None:
    path = ensemble_dir / MEMBERS_FILE
    if path.exists() and json.loads(path.read_text()) != _members_record(configs):
        raise UserError(f"{ensemble_dir} holds an ensemble of other members ({path}); resume "
                        "it with the same member configs, or use another directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_members_record(configs), indent=1) + "\n")


def stacked_batches(iterators: Sequence[Any], steps: int = 0):
    """One batch of every member, stacked [members, ...]: `steps` of them (0: until any
    member's iterator ends)."""
    taken = 0
    while not steps or taken < steps:
        try:
            batches = [next(it) for it in iterators]
        except StopIteration:
            return
        yield {name: np.stack([b[name] for b in batches]) for name in batches[0]}
        taken += 1


def _save(manager, state, iterators) -> None:
    step = int(jax.device_get(state.step[0]))
    data = [checkpoint.all_data_states(it.get_state()) for it in iterators]
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               data=ocp.args.JsonSave(data)))


def _restore(manager, step: int, training: EnsembleTraining, iterators) -> Any:
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          training.state, training.shardings)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
    for iterator, data_state in zip(iterators, restored["data"]):
        iterator.set_state(data_state)
    return restored["state"]


def _evaluate(training: EnsembleTraining, state, datas: Sequence[Any]) -> list[dict[str, float]]:
    """Each member's held-out metrics on its own eval batches, as its single run reports them:
    loss (and bits per byte), or for dpo its objective's loss and metrics."""
    base, members = training.configs[0], range(training.members)
    sums = [jax.device_get(training.evaluate_sums(state, to_global(batch,
                                                                   training.batch_sharding)))
            for batch in stacked_batches([d.eval_iterator() for d in datas], base.eval.steps)]
    if base.train.objective in OBJECTIVE_EVALS:  # per batch: (loss sum [K], {metric: [K]})
        names = sums[0][1] if sums else {}
        return [objective_metrics(sum(float(loss[k]) for loss, _ in sums),
                                  {n: sum(float(metrics[n][k]) for _, metrics in sums)
                                   for n in names})
                for k in members]
    totals = np.sum(np.asarray(sums, np.float64), axis=0) if sums else np.zeros((3, len(members)))
    return [eval_metrics(*(float(x) for x in totals[:, k])) for k in members]


def _save_members(training: EnsembleTraining, state) -> None:
    """Each member's parameters as a checkpoint of its own run directory."""
    for k, config in enumerate(training.configs):
        params = jax.tree.map(lambda x: x[k], state.params)
        checkpoint.save_params(config.run_dir, config, params, step=config.train.steps)


def train_ensemble(configs: Sequence[Config], datas: Sequence[Any],
                   ensemble_dir: storage.PathLike) -> list[dict[str, float]]:
    """Trains (or resumes) the members together; returns each member's last logged record.
    `datas[k]` is member k's data object (`post_data.training_data(configs[k])`)."""
    ensemble_dir = storage.path(ensemble_dir)
    training = build_ensemble(configs, datas[0].token_bytes)
    _check_members_record(ensemble_dir, training.configs)
    base = training.configs[0]
    manager = checkpoint.checkpoint_manager(ensemble_dir, keep=base.checkpoint.keep,
                                            async_save=base.checkpoint.async_save)
    iterators = [d.train_iterator() for d in datas]
    start = manager.latest_step()
    state = training.state
    if start is not None:
        state = _restore(manager, start, training, iterators)
        print(f"resumed ensemble {ensemble_dir} at step {start}")
    start = start or 0
    for config, data in zip(training.configs, datas):
        save_config(config, storage.path(config.run_dir) / checkpoint.CONFIG_FILE)
        if getattr(data, "tokenizer", None) is not None:
            checkpoint.save_run_tokenizer(data.tokenizer, config.run_dir)
    loggers = [MetricsLogger(c.run_dir, resume_step=start) for c in training.configs]
    tokens_per_step = base.train.batch_size * base.data.seq_len
    records: list[dict[str, float]] = [{} for _ in configs]
    window_start, window_steps = time.perf_counter(), 0
    with Preemption() as preemption:
        for done in range(start + 1, base.train.steps + 1):
            batch = next(stacked_batches(iterators, 1))
            state, metrics = training.step(state, to_global(batch, training.batch_sharding))
            window_steps += 1
            last = done == base.train.steps
            eval_due = last or (base.eval.every and done % base.eval.every == 0)
            if eval_due or done % base.train.log_every == 0:
                metrics = jax.device_get(metrics)
                speed = window_steps * tokens_per_step / (time.perf_counter() - window_start)
                evals = _evaluate(training, state, datas) if eval_due else [{}] * len(configs)
                for k, logger in enumerate(loggers):
                    records[k] = {**{n: float(v[k]) for n, v in metrics.items()},
                                  "tokens_per_sec": speed, "ensemble_members": len(configs),
                                  **evals[k]}
                    logger.log(done, records[k])
                _check_bad_steps(records, done, training.configs)
                window_start, window_steps = time.perf_counter(), 0
            preempted = preemption.reached(done)
            if preempted or done % base.checkpoint.every == 0 or last:
                _save(manager, state, iterators)
            if preempted:
                print(f"SIGTERM: saved ensemble step {done} to {ensemble_dir}; exiting")
                break
        else:
            _save_members(training, state)
    manager.wait_until_finished()
    manager.close()
    for logger in loggers:
        logger.close()
    return records


def _check_bad_steps(records: Sequence[dict], step: int, configs: Sequence[Config]) -> None:
    for record, config in zip(records, configs):
        if record["bad_steps"] >= config.train.max_bad_steps:
            raise UserError(
                f"ensemble member {config.run_dir}: {int(record['bad_steps'])} steps in a row "
                f"had a non-finite loss or gradient (last at step {step}); lower its "
                "optimizer.lr or raise optimizer.warmup_steps")
