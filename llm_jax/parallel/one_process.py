"""Jobs that write one set of files (curation, tokenizer training) on a multi-process run:
process 0 does the work, the others wait for it and return what it returned.

Run on every host, they would write the same files at once. The others wait on JAX's
coordination service (a key that process 0 sets when done), not on a device collective, so a
job of hours does not trip a collective timeout; a process 0 that dies is still noticed by
the heartbeat (`LLM_JAX_HEARTBEAT_TIMEOUT`).
"""

from __future__ import annotations

import itertools
import json
from typing import Any, Callable, TypeVar

import jax
from jax._src import distributed

from llm_jax.errors import UserError

Result = TypeVar("Result")
WAIT_MS = 7 * 24 * 3600 * 1000  # a week: curation of a large corpus may take days
_calls = itertools.count()  # every process makes the same calls in the same order


def on_process_zero(work: Callable[[], Result]) -> Result:
    """`work()` on process 0; the others get its JSON-able result, or a UserError if it failed."""
    if jax.process_count() == 1:
        return work()
    key = f"llm_jax/on_process_zero/{next(_calls)}"
    client = distributed.global_state.client
    if jax.process_index() != 0:
        outcome = json.loads(client.blocking_key_value_get(key, WAIT_MS))
        if "error" in outcome:
            raise UserError(f"process 0 failed, so this process stops too: {outcome['error']}")
        return outcome["result"]
    try:
        result = work()
    except BaseException as err:
        message = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
        client.key_value_set(key, json.dumps({"error": message}))
        raise
    client.key_value_set(key, json.dumps({"result": result}))
    return result
