"""PPO / GRPO data: prompts; each train batch is cut from a rollout of the current policy."""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from llm_jax import storage
from llm_jax.config import Config, ConfigError
from llm_jax.data.instructions import prompt_messages
from llm_jax.data.post_pipeline import prompt_index_batches
from llm_jax.data.records import RecordError
from llm_jax.errors import UserError
from llm_jax.infer.host_arrays import every_process_rows, global_batch
from llm_jax.train.experience import minibatch_rows
from llm_jax.train.post_records import PostTrainingData, with_system
from llm_jax.train.rewards import load_reward_function
from llm_jax.train.rollout import Prompt, Rollouts, load_reward_model, rollout_seed
from llm_jax.train.rollout_eval import greedy_rollout_metrics
from llm_jax.train.rollout_schedule import RolloutSchedule


class PromptData(PostTrainingData):
    """Prompts for PPO / GRPO; each train batch is cut from a rollout of the current policy."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        cfg = config.ppo
        self.prompts: list[Prompt] = []
        self.rows_per_rollout = config.train.batch_size * cfg.minibatches
        group = cfg.group_size if cfg.algorithm == "grpo" else 1
        if self.rows_per_rollout % group:
            raise ConfigError(f"ppo.group_size={group} must divide the rollout rows "
                              f"(train.batch_size x ppo.minibatches = {self.rows_per_rollout})")
        self.group = group
        self.rollouts = None
        self._experience = None
        self._rollout_step = 0
        self._read()

    def _encode(self, value: dict) -> None:
        messages = with_system(prompt_messages(value), self.config.post.system)
        tokens = self.template.encode_prompt(messages)
        limit = self.config.data.seq_len - self.config.ppo.max_new_tokens
        if len(tokens) > limit:
            raise RecordError("prompt_too_long", f"the prompt has {len(tokens)} tokens; "
                              f"data.seq_len - ppo.max_new_tokens = {limit}")
        text = self.template.render(messages, add_generation_prompt=True)
        self.prompts.append(Prompt(tokens, text, value))
        self.report.examples += 1

    def train_iterator(self) -> RolloutSchedule:
        args = self._split_args()
        args["batch_size"] = self.rows_per_rollout // self.group  # prompts of one rollout
        args["shards"] = math.gcd(args["shards"], args["batch_size"])
        prompts = prompt_index_batches(len(self.prompts), split="train", **args)
        return RolloutSchedule(prompts, self.config.ppo.updates_per_rollout)

    def eval_iterator(self):
        if not self.config.post.eval_fraction:
            return iter(())
        return prompt_index_batches(len(self.prompts), split="eval", **self._split_args())

    def attach(self, training: Any, state: Any) -> None:
        spec = self.config.ppo.reward
        if not spec:
            raise UserError("ppo.reward is empty: give a reward model checkpoint directory, a "
                            "built-in reward (exact_match, gsm8k) or module:function")
        reward, reward_model = None, None
        if storage.path(spec).is_dir():
            reward_model = load_reward_model(spec, training)
            if reward_model.config.model.vocab_size < self.tokenizer.vocab_size:
                raise UserError(f"the reward model {spec} has a smaller vocabulary than the "
                                "policy's tokenizer; they must share the tokenizer")
        else:
            reward = load_reward_function(spec)
        self._batch_sharding = training.batch_sharding
        self.rollouts = Rollouts(self.config, training, self.prompts, self.template.stop_ids,
                                 self.tokenizer.pad_id, self._decode, reward, reward_model)

    def _decode(self, ids: list[int]) -> str:
        """Text of a reply; ids past the tokenizer's vocabulary (the model's may be padded
        to a rounder size) stand for no text."""
        return self.tokenizer.decode([i for i in ids if i < self.tokenizer.vocab_size])

    def device_batch(self, state: Any, local: dict[str, Any]) -> dict[str, jax.Array]:
        """A new rollout when the schedule says so (of every process's prompts); then this
        update's rows of it."""
        cfg = self.config.ppo
        if "index" in local:
            self._rollout_step = int(jax.device_get(state.step))
            indices = np.repeat(every_process_rows(np.asarray(local["index"])), self.group)
            rows = self.rollouts.sample(state.params, indices,
                                        rollout_seed(self.config.seed, self._rollout_step))
            self._experience = self.rollouts.experience(state, rows)
        elif self._experience is None:
            raise RuntimeError("a PPO update was asked for before any rollout")
        rows = minibatch_rows(len(self._experience["tokens"]), self.config.train.batch_size,
                              int(local["update"]), cfg.minibatches, self.config.seed,
                              self._rollout_step)
        return {name: global_batch(value[rows], self._batch_sharding)
                for name, value in self._experience.items()}

    def evaluate(self, state: Any) -> dict[str, float]:
        return greedy_rollout_metrics(self.rollouts, state.params, self.eval_iterator(),
                                      self.config.eval.steps)
