"""`llm-jax train`: the pretraining (and fine-tuning) loop around the jitted step.

The loop is the only place with side effects: it feeds batches, logs metrics, evaluates,
saves Orbax checkpoints every `checkpoint.every` steps (asynchronously), resumes from the
latest one when restarted in the same run directory, and on SIGTERM (TPU preemption) saves
and exits cleanly, every process at the same step (`llm_jax.parallel.preemption`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from llm_jax import checkpoint, storage
from llm_jax.config import Config, save_config
from llm_jax.data.mixture import SourceTokens, member_names
from llm_jax.errors import UserError
from llm_jax.model.pipeline import bubble_fraction
from llm_jax.parallel.agreement import check_processes_agree
from llm_jax.parallel.distributed import initialize_distributed
from llm_jax.parallel.lockstep import lockstep
from llm_jax.parallel.mesh import make_mesh
from llm_jax.parallel.preemption import Preemption
from llm_jax.parallel.rules import axis_rules
from llm_jax.parallel.sharding import sharding_context
from llm_jax.train import trainable
from llm_jax.train.build import build_training
from llm_jax.train.flops import flops_per_token, peak_flops_per_device
from llm_jax.train.forward import make_forward
from llm_jax.train.init_from import initialize_from
from llm_jax.train.objective_eval import to_global
from llm_jax.train.losses import cross_entropy_sums
from llm_jax.train.metrics import MetricsLogger


@dataclasses.dataclass
class TrainResult:
    run_dir: storage.AnyPath
    step: int
    final_loss: float
    eval: dict[str, float]
    preempted: bool


def evaluate(eval_step, state, batches: Iterator[dict], sharding, steps: int) -> dict[str, float]:
    """Mean next-token loss over `steps` held-out batches (0: all), and bits per byte. Every
    sum is taken over the global batch, so each host reports the same numbers."""
    nll, tokens, num_bytes = 0.0, 0.0, 0.0
    for batch in lockstep(batches, steps):
        sums = jax.device_get(eval_step(state.params, to_global(batch, sharding)))
        nll, tokens, num_bytes = (total + float(x) for total, x in
                                  zip((nll, tokens, num_bytes), sums))
    return eval_metrics(nll, tokens, num_bytes)


def eval_metrics(nll: float, tokens: float, num_bytes: float) -> dict[str, float]:
    """Held-out sums as `eval_loss` (nats per token) and `eval_bpb` (bits per byte)."""
    if not tokens:
        return {}
    result = {"eval_loss": nll / tokens}
    if num_bytes:
        result["eval_bpb"] = nll / (math.log(2) * num_bytes)
    return result


def eval_sums(config: Config, mesh, token_bytes: np.ndarray | None):
    """The un-jitted `sums(params, batch)` -> sums of NLL, target tokens and the bytes they
    stand for (`token_bytes[id]`; none without a byte table)."""
    forward = make_forward(config, mesh)
    byte_table = jnp.zeros((1,), jnp.float32) if token_bytes is None else jnp.asarray(token_bytes)

    def sums(params, batch):
        logits = forward(params, batch)
        mask = batch["loss_mask"].astype(jnp.float32)
        nll, _ = cross_entropy_sums(logits, batch["targets"], mask)
        if token_bytes is None:
            return nll, jnp.sum(mask), jnp.zeros(())
        return nll, jnp.sum(mask), jnp.sum(byte_table[batch["targets"]] * mask)

    return sums


def make_eval_step(config: Config, mesh, token_bytes: np.ndarray | None):
    """`eval_step(params, batch)`: `eval_sums` compiled, under the mesh's rules."""
    rules = axis_rules(config.mesh.rules)
    eval_step = jax.jit(eval_sums(config, mesh, token_bytes))

    def run(params, batch):
        with sharding_context(mesh, rules):
            return eval_step(params, batch)

    return run


def train(config: Config, data: Any, progress: bool = True) -> TrainResult:
    """Runs (or resumes) `config` on `data`, an object with `train_iterator()`,
    `eval_iterator()`, `token_bytes` and `tokenizer` (see `llm_jax.train.data`); the run
    directory gets its config and tokenizer once the checkpoint it resumes has loaded."""
    initialize_distributed()
    check_processes_agree(config)
    run_dir = storage.path(config.run_dir)
    mesh = make_mesh(config)
    manager = checkpoint.checkpoint_manager(run_dir, keep=config.checkpoint.keep,
                                            async_save=config.checkpoint.async_save)
    start = manager.latest_step()
    if start is not None:
        checkpoint.check_resumable(run_dir, config)

    total_steps = config.train.steps
    training = build_training(config, mesh)
    state, shardings, step_fn = training.state, training.shardings, training.step
    pipelined = mesh.shape["pipe"] > 1
    eval_fn = make_eval_step(config, mesh, data.token_bytes)
    sharding = training.batch_sharding

    train_batches = data.train_iterator()
    if start is not None:
        state, data_state = checkpoint.restore_train_state(manager, start, state, shardings)
        train_batches.set_state(data_state)
        print(f"resumed {run_dir} at step {start}")
    elif config.train.init_from:
        state = initialize_from(config, state, shardings)
    start = start or 0
    if jax.process_index() == 0:  # the run directory describes what it holds, once it holds it
        save_config(config, run_dir / checkpoint.CONFIG_FILE)
        if getattr(data, "tokenizer", None) is not None:
            checkpoint.save_run_tokenizer(data.tokenizer, run_dir)
    # Post-training data may need the model: reference log-probs computed before the first
    # step, PPO's rollouts sampled from the current policy, and its own evaluation.
    if hasattr(data, "attach"):
        data.attach(training, state)
    device_batch = getattr(data, "device_batch", None)
    own_eval = getattr(data, "evaluate", None)

    seq_len = config.data.seq_len
    tokens_per_step = config.train.batch_size * seq_len
    model_flops = flops_per_token(config.model, seq_len)
    peak, peak_source = peak_flops_per_device()
    peak_total = peak * jax.device_count()
    bubble = bubble_fraction(mesh.shape["pipe"], config.train.microbatches) if pipelined else 0.0
    if jax.process_index() == 0:
        if config.model.lora.rank:
            print(trainable.describe(config, state.params))
        print(f"mesh {dict(mesh.shape)}; MFU against {peak / 1e12:.1f} TFLOP/s per device "
              f"({peak_source}); pipeline bubble {bubble:.1%}")
    logger = MetricsLogger(run_dir, resume_step=start)
    source_tokens = (SourceTokens(member_names(config))
                     if config.data.mixture and config.train.objective == "lm" else None)
    bar = tqdm(total=total_steps, initial=start, disable=not progress or jax.process_index() > 0,
               dynamic_ncols=True, desc="train")
    profile = _parse_profile(config.train.profile_steps)

    last_loss, eval_metrics, preempted = float("nan"), {}, False
    window_start, window_steps = time.perf_counter(), 0
    with Preemption() as preemption:
        for step in range(start, total_steps):
            if profile and step == profile[0]:
                jax.profiler.start_trace(str(run_dir / "profile"))
            local = next(train_batches)
            if source_tokens:
                local = source_tokens.take(local)
            batch = device_batch(state, local) if device_batch else to_global(local, sharding)
            state, metrics = step_fn(state, batch)
            window_steps += 1
            done = step + 1
            if profile and done == profile[1]:
                jax.block_until_ready(state)
                jax.profiler.stop_trace()
            eval_due = done == total_steps or (config.eval.every and done % config.eval.every == 0)
            if eval_due or done % config.train.log_every == 0:
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                elapsed = time.perf_counter() - window_start
                tokens_per_sec = window_steps * tokens_per_step / elapsed
                last_loss = metrics["loss"]
                record = {**metrics, "tokens_per_sec": tokens_per_sec,
                          "mfu": tokens_per_sec * model_flops / peak_total}
                if pipelined:
                    record["pipeline_bubble"] = bubble
                if source_tokens:
                    record.update(source_tokens.metrics())
                if eval_due:
                    eval_metrics = own_eval(state) if own_eval else evaluate(
                        eval_fn, state, data.eval_iterator(), sharding, config.eval.steps)
                    record.update(eval_metrics)
                logger.log(done, record)
                bar.set_postfix(loss=f"{last_loss:.3f}", tok_s=f"{tokens_per_sec:,.0f}")
                _check_bad_steps(int(metrics["bad_steps"]), done, config, manager)
                window_start, window_steps = time.perf_counter(), 0
            bar.update(1)
            preempted = preemption.reached(done)
            if preempted or done % config.checkpoint.every == 0 or done == total_steps:
                checkpoint.save_train_state(manager, state, train_batches.get_state(),
                                            config.seed)
            if preempted:
                print(f"SIGTERM: saved step {done} to {run_dir}; exiting")
                break
    bar.close()
    manager.wait_until_finished()
    manager.close()
    logger.close()
    return TrainResult(run_dir, int(jax.device_get(state.step)), last_loss, eval_metrics,
                       preempted)


def _check_bad_steps(bad_steps: int, step: int, config: Config, manager) -> None:
    if bad_steps >= config.train.max_bad_steps:
        manager.wait_until_finished()
        raise UserError(
            f"{bad_steps} steps in a row had a non-finite loss or gradient (last at step "
            f"{step}); lower optimizer.lr, raise optimizer.warmup_steps or check the data. "
            "The checkpoints before them are kept.")


def _parse_profile(spec: str) -> tuple[int, int] | None:
    if not spec:
        return None
    try:
        first, last = (int(x) for x in spec.split(":"))
    except ValueError:
        raise UserError(f"train.profile_steps={spec!r} must look like start:stop") from None
    return first, last
