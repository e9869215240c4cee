"""XLA options the project sets by default, before JAX starts a backend.

On CPU, XLA's YNNPACK fusions of dots are slower than its Eigen matmuls at this project's
shapes: the tiny preset's train step is about 5% faster without them (measured with
`benchmarks/train_speed.py` on 2 cores). A value the user sets in `XLA_FLAGS` wins.
"""

from __future__ import annotations

import os

DEFAULTS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def apply_defaults() -> None:
    """Adds each default to `XLA_FLAGS` unless the flag is already there."""
    flags = os.environ.get("XLA_FLAGS", "")
    extra = [f"--{name}={value}" for name, value in DEFAULTS.items() if name not in flags]
    if extra:
        os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()
