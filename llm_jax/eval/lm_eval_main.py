"""`python -m llm_jax.eval.lm_eval_main <lm_eval arguments>`: lm-eval's own command line with
the `llm_jax` model registered, e.g.

    python -m llm_jax.eval.lm_eval_main --model llm_jax --model_args checkpoint=DIR \
        --tasks hellaswag --include_path my_tasks/

The plain `lm_eval` command cannot see models outside lm-eval's package (see `harness`).

On a pod the same command runs on every host: each process scores every request (the model is
sharded over all of them, so each forward pass needs all of them), and process 0 alone prints
the table and writes `--output_path`, samples and loggers.
"""

from __future__ import annotations

import argparse
import contextlib
import io

import jax
from lm_eval._cli import HarnessCLI
from lm_eval.utils import setup_logging

import llm_jax.eval.harness  # noqa: F401  (registers the model)
from llm_jax.parallel.distributed import initialize_distributed

OUTPUTS = {"output_path": None, "log_samples": False, "show_config": False, "wandb_args": {},
           "wandb_config_args": {}, "trackio_args": {}, "hf_hub_log_args": {}}


def without_outputs(args: argparse.Namespace) -> argparse.Namespace:
    """`args` with nothing written, logged to a service or pushed to the Hub."""
    return argparse.Namespace(**{**vars(args), **{key: value for key, value in OUTPUTS.items()
                                                  if hasattr(args, key)}})


def main() -> None:
    initialize_distributed()  # before lm-eval or the model touches a device
    setup_logging()
    parser = HarnessCLI()
    args = parser.parse_args()
    if jax.process_index() == 0:
        parser.execute(args)
        return
    with contextlib.redirect_stdout(io.StringIO()):
        parser.execute(without_outputs(args))


if __name__ == "__main__":
    main()
