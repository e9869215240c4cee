"""Batched autoregressive decoding with a KV cache: one compiled prefill, one compiled decode loop.

Prompts of different lengths are left-padded to a common bucket length: every row's last
prompt token then sits in the same slot, so one cache write slot serves the whole batch,
while each row keeps its own RoPE positions and padding is masked out by segment id 0. A row
therefore decodes exactly as it would alone.

The decode loop is a `lax.while_loop` that runs until a step limit or until every row has
ended; the limit is a traced argument, so the host can run it in chunks (to check stop
strings between chunks) without compiling again.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from llm_jax.config import ModelConfig
from llm_jax.errors import UserError
from llm_jax.infer.host_arrays import global_batch, to_host
from llm_jax.infer.placement import Placement
from llm_jax.infer.sampling import SamplingOptions, sample_tokens
from llm_jax.model import Transformer
from llm_jax.model.kv_cache import KVCache, cache_shardings, init_cache

StopCheck = Callable[[int, list[int]], bool]  # (row, tokens generated so far) -> stop now?


@flax.struct.dataclass
class DecodeState:
    """Everything the decode loop carries from one step to the next."""

    cache: KVCache
    tokens: jax.Array  # [batch, new_slots] generated ids, pad after a row has ended
    generated: jax.Array  # [batch] how many tokens each row produced (an EOS included)
    positions: jax.Array  # [batch] position of the token fed at the next step
    done: jax.Array  # [batch] bool
    step: jax.Array  # scalar: tokens generated so far by the longest row
    key: jax.Array


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class Generator:
    """Generates token continuations of token prompts for one model and its parameters."""

    def __init__(self, config: ModelConfig, params: Any, *, eos_ids: Sequence[int] = (),
                 pad_id: int = 0, length_bucket: int = 64, mesh: jax.sharding.Mesh | None = None,
                 rules: Any = None):
        self.config = config
        self.params = params
        self.eos = np.asarray(list(eos_ids) or [-1], np.int32)
        self.pad_id = pad_id
        self.length_bucket = length_bucket
        self.mesh, self.rules = mesh, rules
        self.placement = None if mesh is None else Placement(mesh, rules)
        model = Transformer(config)

        def prefill(params, tokens, positions, segments, lengths, active, knobs, seed, eos,
                    new_slots):
            # Made inside, as a key made outside lives on one device; raw key data, as a state
            # holding a typed key misses jit's fast dispatch cache.
            key = jax.random.PRNGKey(seed)
            batch, prompt_len = tokens.shape
            cache = init_cache(config, batch, prompt_len + new_slots)
            logits, cache = model.apply({"params": params}, tokens, positions, segments,
                                        cache=cache)
            first = sample_tokens(logits[:, -1], jax.random.fold_in(key, 0), *knobs)
            first = jnp.where(active, first, pad_id)
            out = jnp.full((batch, new_slots), pad_id, jnp.int32).at[:, 0].set(first)
            done = ~active | jnp.isin(first, eos)
            return DecodeState(cache=cache, tokens=out, generated=active.astype(jnp.int32),
                               positions=lengths, done=done, step=jnp.ones((), jnp.int32),
                               key=key)

        def decode(params, state: DecodeState, knobs, eos, stop_at):
            def unfinished(s: DecodeState):
                return (s.step < stop_at) & ~jnp.all(s.done)

            def one_token(s: DecodeState) -> DecodeState:
                last = jax.lax.dynamic_slice_in_dim(s.tokens, s.step - 1, 1, axis=1)
                logits, cache = model.apply(
                    {"params": params}, last, s.positions[:, None], jnp.ones_like(last),
                    cache=s.cache)
                token = sample_tokens(logits[:, 0], jax.random.fold_in(s.key, s.step), *knobs)
                token = jnp.where(s.done, pad_id, token)
                tokens = jax.lax.dynamic_update_slice_in_dim(s.tokens, token[:, None], s.step,
                                                             axis=1)
                return s.replace(cache=cache, tokens=tokens,
                                 generated=s.generated + (~s.done).astype(jnp.int32),
                                 positions=s.positions + 1, done=s.done | jnp.isin(token, eos),
                                 step=s.step + 1)

            return jax.lax.while_loop(unfinished, one_token, state)

        # The state keeps one sharding from prefill on, so the decode loop compiles once.
        state = self._state_shardings()
        self._prefill = jax.jit(prefill, static_argnames="new_slots", out_shardings=state)
        self._decode = jax.jit(decode, donate_argnums=1, out_shardings=state)

    def _replicated(self, value: np.ndarray) -> jax.Array:
        """A small input, the same on every device (global when several processes run)."""
        sharding = None if self.mesh is None else NamedSharding(self.mesh, PartitionSpec())
        return global_batch(np.asarray(value), sharding)

    def _state_shardings(self) -> DecodeState | None:
        """Where the decode state lives: the cache as the attention activations, the rows'
        tokens and counters split as the batch is, the step and key on every device."""
        if self.placement is None:
            return None
        replicated = NamedSharding(self.mesh, PartitionSpec())
        values = self.placement.row_values
        return DecodeState(
            cache=cache_shardings(self.mesh, self.rules), tokens=self.placement.rows,
            generated=values, positions=values, done=values, step=replicated, key=replicated)

    def _context(self):
        if self.mesh is None:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        stack.enter_context(jax.set_mesh(self.mesh))
        stack.enter_context(nn.logical_axis_rules(self.rules))
        return stack

    def check_prompts(self, prompts: Sequence[Sequence[int]]) -> None:
        """Fails with a message on an empty prompt or one that leaves no room to generate."""
        if not prompts:
            raise UserError("no prompts were given")
        for i, prompt in enumerate(prompts):
            if not len(prompt):
                raise UserError(f"prompt {i} is empty: give at least one token of text")
            if len(prompt) >= self.config.max_seq_len:
                raise UserError(
                    f"prompt {i} has {len(prompt)} tokens but the model's context "
                    f"(model.max_seq_len) is {self.config.max_seq_len}: shorten it to at most "
                    f"{self.config.max_seq_len - 1} tokens so one can be generated")

    def generate(self, prompts: Sequence[Sequence[int]], options: SamplingOptions,
                 should_stop: StopCheck | None = None, check_every: int = 16,
                 params: Any = None) -> list[list[int]]:
        """New tokens of each prompt, ending with an EOS id where one was generated.

        Generation stops at `options.max_new_tokens` or where a row would run past the
        model's context. `should_stop` is asked every `check_every` tokens about each
        unfinished row (stop strings need the text, which only the host can decode).
        `params` (same shapes) replace the constructor's for this call without compiling
        again: PPO samples from the policy as it trains.
        """
        params = self.params if params is None else params
        self.check_prompts(prompts)
        longest = max(len(p) for p in prompts)
        max_new = min(options.max_new_tokens, self.config.max_seq_len - longest)
        prompt_len = round_up(longest, self.length_bucket)
        new_slots = round_up(max_new, self.length_bucket)
        batch = _next_power_of_two(len(prompts))
        if self.placement is not None:
            batch = round_up(batch, self.placement.batch_multiple)
        rows = list(prompts) + [prompts[0]] * (batch - len(prompts))
        tokens = np.full((batch, prompt_len), self.pad_id, np.int32)
        segments = np.zeros((batch, prompt_len), np.int32)
        positions = np.zeros((batch, prompt_len), np.int32)
        lengths = np.array([len(r) for r in rows], np.int32)
        for i, row in enumerate(rows):
            start = prompt_len - len(row)
            tokens[i, start:] = row
            segments[i, start:] = 1
            positions[i, start:] = np.arange(len(row))
        active = np.arange(batch) < len(prompts)
        knobs = (self._replicated(np.float32(options.temperature)),
                 self._replicated(np.int32(options.top_k)),
                 self._replicated(np.float32(options.top_p)))
        eos = self._replicated(self.eos)
        rows, values = ((None, None) if self.placement is None else
                        (self.placement.rows, self.placement.row_values))
        tokens, positions, segments = (global_batch(a, rows) for a in (tokens, positions, segments))
        lengths, active = global_batch(lengths, values), global_batch(active, values)

        with self._context():
            state = self._prefill(params, tokens, positions, segments, lengths, active,
                                  knobs, self._replicated(np.uint32(options.seed)), eos,
                                  new_slots=new_slots)
            chunk = check_every if should_stop else max_new
            while True:
                done = to_host(state.done)
                step = int(to_host(state.step))
                if should_stop is not None:
                    host_tokens, generated = to_host(state.tokens), to_host(state.generated)
                    stopped = [i for i in range(len(prompts)) if not done[i]
                               and should_stop(i, host_tokens[i, :generated[i]].tolist())]
                    if stopped:
                        done = done.copy()
                        done[stopped] = True
                        state = state.replace(done=global_batch(done, values))
                if step >= max_new or done.all():
                    break
                state = self._decode(params, state, knobs, eos,
                                     self._replicated(np.int32(min(step + chunk, max_new))))
        host_tokens, generated = to_host(state.tokens), to_host(state.generated)
        return [host_tokens[i, :generated[i]].tolist() for i in range(len(prompts))]

    def compiled_counts(self) -> tuple[int, int]:
        """How many programs prefill and decode have compiled (one each per shape bucket)."""
        return self._prefill._cache_size(), self._decode._cache_size()
