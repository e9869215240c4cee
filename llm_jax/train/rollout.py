"""PPO's experience: responses sampled from the current policy with the KV-cache generator,
scored, and turned into training rows (the contract in `ppo.py`).

One rollout:

1. the prompts (each repeated `ppo.group_size` times for GRPO) are sampled from the policy's
   current parameters by `Generator` (one compiled prefill and decode loop, reused every time),
   stopping at the chat template's end-of-turn ids or `ppo.max_new_tokens`;
2. each response is scored, by a programmatic reward on the decoded text (host) or by a reward
   model checkpoint (a forward pass on the mesh);
3. one jitted, sharded pass computes, for every response token, the policy's and the
   reference's log-probs and the critic's values (in chunks of `train.batch_size` rows, the
   memory of one train step's forward), then rewards with the per-token KL penalty, GAE and
   whitened advantages (PPO) or group-normalized advantages (GRPO), over the whole rollout.

Every process samples and scores the whole rollout on the global mesh (the prompts of every
process, gathered in process order, which is the data shards' order), so each runs the same
decode iterations and holds every scored row; the train steps that follow each take
`train.batch_size` rows of them, in a new random order every epoch, placed like any other
batch. The scoring pass is sharded like the train step. It returns one stacked array rather
than one per field: several outputs of a program whose parameters are sharded over 8 simulated
CPU devices can deadlock in XLA's CPU scheduler, one output cannot.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from llm_jax import checkpoint
from llm_jax.config import Config
from llm_jax.errors import UserError
from llm_jax.infer.generator import Generator
from llm_jax.infer.host_arrays import global_batch, to_host
from llm_jax.infer.sampling import SamplingOptions
from llm_jax.model.heads import init_train_params, last_token_index
from llm_jax.model.microbatches import merge_microbatches, split_microbatches
from llm_jax.model.output_head import lm_logits
from llm_jax.parallel.sharding import logical_to_shardings, sharding_context
from llm_jax.train.advantages import gae, group_advantages, kl_rewards, whiten
from llm_jax.train.forward import make_forward
from llm_jax.train.init_from import reference_params
from llm_jax.train.logprobs import sequence_logprobs
from llm_jax.train.ppo import forward_batch, policy_outputs
from llm_jax.train.reward_model import sequence_scores
from llm_jax.train.rewards import RewardFunction

ROW_FIELDS = ("tokens", "positions", "segment_ids", "response_mask", "scores")
SCORED_FIELDS = ("scores", "old_logprobs", "ref_logprobs", "old_values", "returns", "advantages",
                 "kl")


@dataclasses.dataclass(frozen=True)
class Prompt:
    tokens: np.ndarray  # int32, ending with the opening of the assistant's reply
    text: str  # the same, rendered as text, for programmatic rewards
    record: dict  # the JSON record it came from


@dataclasses.dataclass(frozen=True)
class RewardModel:
    config: Config
    params: Any


def load_reward_model(directory: str, training: Any) -> RewardModel:
    """A reward model checkpoint (objective `reward`), placed on the run's mesh."""
    run_dir, _ = checkpoint.resolve(directory)
    config = checkpoint.load_run_config(run_dir)
    if config.train.objective != "reward":
        raise UserError(f"ppo.reward={directory} is a {config.train.objective} "
                        "checkpoint, not a reward model (train.objective=reward)")
    boxed = jax.eval_shape(lambda: init_train_params(config, jax.random.key(0)))
    shardings = logical_to_shardings(boxed, training.mesh, training.rules)
    _, params = checkpoint.restore_params(run_dir, shardings)
    return RewardModel(config, params)


class Rollouts:
    """Samples, scores and prepares PPO/GRPO rows for one run."""

    def __init__(self, config: Config, training: Any, prompts: Sequence[Prompt],
                 stop_ids: Sequence[int], pad_id: int, decode: Any,
                 reward: RewardFunction | None = None, reward_model: RewardModel | None = None):
        self.config, self.training = config, training
        self.prompts, self.pad_id, self.decode = prompts, pad_id, decode
        self.reward, self.reward_model = reward, reward_model
        self.stop_ids = tuple(stop_ids)
        self.generator = Generator(config.model, None, eos_ids=self.stop_ids, pad_id=pad_id,
                                   length_bucket=min(64, config.data.seq_len),
                                   mesh=training.mesh, rules=training.rules)
        self._forward = make_forward(config, training.mesh)
        self._rm_forward = None if reward_model is None else make_forward(reward_model.config)
        rows = training.batch_sharding
        stacked = NamedSharding(training.mesh, PartitionSpec(rows.spec[0], None, None))
        self._score = jax.jit(self._score_fn, static_argnames="chunks", out_shardings=stacked)
        self._rm_scores = jax.jit(self._rm_scores_fn, out_shardings=rows)

    # -- sampling (host)

    def sample(self, params: Any, indices: Sequence[int], seed: int,
               greedy: bool = False) -> dict[str, np.ndarray]:
        """Rows [n, T] of prompts + sampled responses, with programmatic scores; every
        process passes the same `indices` and gets the same rows."""
        cfg, length = self.config.ppo, self.config.data.seq_len
        options = SamplingOptions(max_new_tokens=cfg.max_new_tokens,
                                  temperature=0.0 if greedy else cfg.temperature,
                                  top_k=cfg.top_k, top_p=cfg.top_p, seed=seed)
        prompts = [self.prompts[i] for i in indices]
        responses = self.generator.generate([p.tokens.tolist() for p in prompts], options,
                                            params=params)
        n = len(prompts)
        out = {"tokens": np.full((n, length), self.pad_id, np.int32),
               "positions": np.zeros((n, length), np.int32),
               "segment_ids": np.zeros((n, length), np.int32),
               "response_mask": np.zeros((n, length), np.float32),
               "scores": np.zeros((n, length), np.float32)}
        texts = []
        for i, (prompt, response) in enumerate(zip(prompts, responses)):
            sequence = np.concatenate([prompt.tokens, np.asarray(response, np.int32)])[:length]
            end = len(sequence)
            out["tokens"][i, :end] = sequence
            out["positions"][i, :end] = np.arange(end)
            out["segment_ids"][i, :end] = 1
            out["response_mask"][i, len(prompt.tokens):end] = 1.0
            body = response[:-1] if response and response[-1] in self.stop_ids else response
            texts.append(self.decode(body))
        if self.reward is not None:
            scores = np.asarray(self.reward([p.text for p in prompts], texts,
                                            [p.record for p in prompts]), np.float32)
            if scores.shape != (n,):
                raise ValueError(f"ppo.reward returned {scores.shape[0]} scores for {n} replies")
            last = out["segment_ids"].sum(axis=1) - 1
            out["scores"][np.arange(n), last] = scores
        return out

    # -- scoring and advantages (device)

    def _rm_scores_fn(self, rm_params, batch):
        rm = self.reward_model
        scores = sequence_scores(rm.config.model, self._rm_forward, rm_params,
                                 forward_batch(batch))
        segment_ids = batch["segment_ids"]
        last = jax.nn.one_hot(last_token_index(segment_ids), segment_ids.shape[1], dtype=jnp.float32)
        return last * scores[:, None]

    def _score_fn(self, state, rm_params, batch, chunks: int):
        cfg = self.config.ppo
        params, reference = state.params, reference_params(self.config, state)

        def one(chunk):
            logps, values, _ = policy_outputs(self.config, self._forward, params, chunk)
            ref_hidden = self._forward(reference, forward_batch(chunk), return_hidden=True)
            ref_logits = lm_logits(self.config.model, reference, ref_hidden) / cfg.temperature
            out = {"old_logprobs": logps,
                   "ref_logprobs": sequence_logprobs(ref_logits, chunk["tokens"]),
                   "old_values": jnp.zeros_like(logps) if values is None else values}
            if rm_params is not None:
                out["scores"] = self._rm_scores_fn(rm_params, chunk)
            return out

        if chunks == 1:
            scored = one(batch)
        else:
            scored = jax.lax.map(one, split_microbatches(batch, chunks))
            scored = merge_microbatches(scored)
        mask = batch["response_mask"]
        old, ref = scored["old_logprobs"] * mask, scored["ref_logprobs"] * mask
        scores = scored.get("scores", batch["scores"])
        sequence_scores_ = jnp.sum(scores, axis=1)
        if cfg.algorithm == "ppo":
            values = scored["old_values"] * mask
            rewards = kl_rewards(sequence_scores_, old, ref, mask, cfg.kl_coef)
            advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.gae_lambda)
            if cfg.whiten_advantages:
                advantages = whiten(advantages, mask)
        else:
            values = returns = jnp.zeros_like(old)
            advantages = group_advantages(sequence_scores_, cfg.group_size)[:, None] * mask
        fields = {"scores": scores, "old_logprobs": old, "ref_logprobs": ref,
                  "old_values": values, "returns": returns, "advantages": advantages,
                  "kl": old - ref}
        return jnp.stack([fields[name] for name in SCORED_FIELDS], axis=1)  # [N, fields, T]

    def experience(self, state: Any, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The scored rollout [n, T] (the contract in `ppo.py`), whole on every process."""
        batch = self._placed(rows)
        rm_params = None if self.reward_model is None else self.reward_model.params
        chunks = max(1, batch["tokens"].shape[0] // self.config.train.batch_size)
        with sharding_context(self.training.mesh, self.training.rules):
            stacked = self._score(state, rm_params, batch, chunks=chunks)
        stacked = to_host(stacked)
        out = {name: rows[name] for name in ROW_FIELDS}
        out.update({name: stacked[:, i] for i, name in enumerate(SCORED_FIELDS)})
        return out

    def scores(self, rows: dict[str, np.ndarray]) -> np.ndarray:
        """The score of each row: programmatic ones as sampled, or the reward model's."""
        if self.reward_model is None:
            return rows["scores"].sum(axis=1)
        with sharding_context(self.training.mesh, self.training.rules):
            scored = self._rm_scores(self.reward_model.params, self._placed(rows))
        return to_host(scored).sum(axis=1)

    def _placed(self, rows: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Whole-rollout rows (the same on every process) split over the mesh like a batch."""
        return {name: global_batch(value, self.training.batch_sharding)
                for name, value in rows.items()}


def rollout_seed(seed: int, step: int) -> int:
    """A different sampling seed for every rollout of a run, the same on a rerun."""
    return int(np.random.default_rng([seed, step]).integers(0, 2**31 - 1))
