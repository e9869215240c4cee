"""Step time and tokens/s of the tiny model for each tested mesh on 8 simulated CPU devices,
and the GPipe schedule's measured step time against its ideal bubble.

    python benchmarks/mesh_throughput.py [--steps 5]

Simulated devices share this machine's cores, so the mesh rows compare the cost of each
layout's extra collectives and bookkeeping, not real parallel speedup. In the pipeline rows
every iteration runs all stages (idle ones on zeros), so the step time should grow with the
schedule length, (m + p - 1) / m times the bubble-free time: the ideal column.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402

from llm_jax.config import load_config  # noqa: E402
from llm_jax.model.pipeline import bubble_fraction  # noqa: E402
from llm_jax.parallel.mesh import make_mesh  # noqa: E402
from llm_jax.train.build import build_training  # noqa: E402
from llm_jax.train.synthetic import seconds_per_step  # noqa: E402

MESHES = {
    "1 device": ["mesh.fsdp=1"],
    "data=8": ["mesh.data=8", "mesh.fsdp=1"],
    "fsdp=8": ["mesh.fsdp=8"],
    "fsdp=4 tensor=2": ["mesh.fsdp=4", "mesh.tensor=2"],
    "data=4 pipe=2 (m=2)": ["mesh.data=4", "mesh.fsdp=1", "mesh.pipe=2", "train.microbatches=2"],
    "tensor=2 pipe=4 (m=4)": ["mesh.fsdp=1", "mesh.tensor=2", "mesh.pipe=4",
                              "train.microbatches=4"],
    "data=2 fsdp=2 tensor=2": ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"],
}
BASE = ["train.batch_size=16", "data.seq_len=256", "train.steps=1000"]


def time_steps(overrides: list[str], steps: int) -> float:
    """Seconds per step after one compile-and-warm-up step."""
    config = load_config("tiny", BASE + overrides)
    devices = jax.devices()[:1] if overrides == MESHES["1 device"] else jax.devices()
    return seconds_per_step(build_training(config, make_mesh(config, devices)), steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--pipeline-only", action="store_true", help="skip the mesh table")
    args = parser.parse_args()
    tokens = 16 * 256
    print(f"tiny model, batch 16 x 256 tokens, {jax.device_count()} devices "
          f"({jax.devices()[0].device_kind}), {os.cpu_count()} CPU cores\n")
    if not args.pipeline_only:
        print("| mesh | step time (s) | tokens/s |\n|---|---|---|")
        for name, overrides in MESHES.items():
            seconds = time_steps(overrides, args.steps)
            print(f"| {name} | {seconds:.3f} | {tokens / seconds:,.0f} |", flush=True)

    print("\nGPipe on pipe=2 (data=4), batch 32 x 256: step time against the bubble model\n")
    print("| microbatches m | bubble (p-1)/(m+p-1) | step time (s) | measured / m=8 "
          "| ideal (m+p-1)/m ÷ (8+p-1)/8 |\n|---|---|---|---|---|")
    pipe = 2
    times = {m: time_steps(["mesh.data=4", "mesh.fsdp=1", f"mesh.pipe={pipe}",
                            f"train.microbatches={m}", "train.batch_size=32"], args.steps)
             for m in (1, 2, 4, 8)}
    for m, seconds in times.items():
        ideal = ((m + pipe - 1) / m) / ((8 + pipe - 1) / 8)
        print(f"| {m} | {bubble_fraction(pipe, m):.2f} | {seconds:.3f} | "
              f"{seconds / times[8]:.2f} | {ideal:.2f} |")


if __name__ == "__main__":
    main()
