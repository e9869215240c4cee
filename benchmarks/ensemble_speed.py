"""Ensemble speed: K seeds of the experiments' tiny model as one compiled program
(`llm_jax.train.ensemble`) against one seed trained alone, in the same process.

    python benchmarks/ensemble_speed.py                 # K=4, the experiments' 200 steps
    python benchmarks/ensemble_speed.py --members 8 --steps 50

Each side's wall time runs from building the state to the last step's result: the compile
once, then every step on synthetic batches (no data stack, which both sides would share). The
ratio is what an experiment pays for K seeds instead of one; K separate runs pay K times one.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import jax
import numpy as np

from llm_jax.config import load_config
from llm_jax.parallel.mesh import make_mesh
from llm_jax.train.build import build_training
from llm_jax.train.ensemble import build_ensemble
from llm_jax.train.synthetic import synthetic_batch


def experiment_settings() -> list[str]:
    """experiments/scales.py's tiny scale: model, batch, length and steps."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    from scales import TINY

    return list(TINY)


def one_seed(config, batches) -> tuple[float, float]:
    """(wall seconds, seconds per step after the first) of one run."""
    start = time.perf_counter()
    training = build_training(config, make_mesh(config, jax.devices()[:1]))
    state = training.state
    for index, batch in enumerate(batches):
        state, metrics = training.step(state, training.put_batch(batch))
        if index == 0:
            jax.block_until_ready(metrics)
            first = time.perf_counter()
    jax.block_until_ready(metrics)
    end = time.perf_counter()
    return end - start, (end - first) / max(len(batches) - 1, 1)


def ensemble(configs, member_batches) -> tuple[float, float]:
    start = time.perf_counter()
    training = build_ensemble(configs, devices=jax.devices()[:1])
    state = training.state
    for index, batches in enumerate(zip(*member_batches)):
        stacked = {name: np.stack([b[name] for b in batches]) for name in batches[0]}
        state, metrics = training.step(state, jax.device_put(stacked, training.batch_sharding))
        if index == 0:
            jax.block_until_ready(metrics)
            first = time.perf_counter()
    jax.block_until_ready(metrics)
    end = time.perf_counter()
    return end - start, (end - first) / max(len(member_batches[0]) - 1, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("overrides", nargs="*", help="key.sub=value for every member")
    args = parser.parse_args()
    settings = [*experiment_settings(), f"train.steps={args.steps}", *args.overrides]
    configs = [load_config("tiny", [*settings, f"seed={k}", f"run_dir=/tmp/ensemble_speed/{k}"])
               for k in range(args.members)]
    base = configs[0]
    shape = (base.train.batch_size, base.data.seq_len, base.model.vocab_size)
    member_batches = [[synthetic_batch(*shape, seed=1000 * k + t) for t in range(args.steps)]
                      for k in range(args.members)]
    single = dataclasses.replace(base, mesh=dataclasses.replace(base.mesh, fsdp=1))
    configs = [dataclasses.replace(c, mesh=single.mesh) for c in configs]
    one_wall, one_step = one_seed(single, member_batches[0])
    many_wall, many_step = ensemble(configs, member_batches)
    print(f"{jax.devices()[0].device_kind}, d_model {base.model.d_model}, "
          f"{base.model.num_layers} layers, batch {shape[0]} x {shape[1]}, {args.steps} steps")
    print(f"one seed:        {one_wall:7.1f} s wall, {one_step * 1e3:7.1f} ms/step")
    print(f"ensemble K={args.members}:    {many_wall:7.1f} s wall, {many_step * 1e3:7.1f} ms/step")
    print(f"per step: {many_step / one_step:.2f}x; {args.members} separate runs: "
          f"{args.members:.2f}x")
    print(f"ensemble K={args.members} / one seed: {many_wall / one_wall:.2f}x")


if __name__ == "__main__":
    main()
