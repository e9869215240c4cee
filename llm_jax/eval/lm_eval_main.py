"""`python -m llm_jax.eval.lm_eval_main <lm_eval arguments>`: lm-eval's own command line with
the `llm_jax` model registered, e.g.

    python -m llm_jax.eval.lm_eval_main --model llm_jax --model_args checkpoint=DIR \
        --tasks hellaswag --include_path my_tasks/

The plain `lm_eval` command cannot see models outside lm-eval's package (see `harness`).
"""

import llm_jax.eval.harness  # noqa: F401  (registers the model)
from lm_eval.__main__ import cli_evaluate

if __name__ == "__main__":
    cli_evaluate()
