"""The training loop's view of post-training data, one class per kind of objective.

    lm             TrainingData    the curated corpus (pretraining)
    sft            SftData         conversations, loss on the assistant's tokens, packed rows
    dpo, reward    PreferenceData  (prompt, chosen, rejected) pairs
    ppo            PromptData      prompts; batches are rollouts of the current policy

Each has what `llm_jax.train.loop.train` reads: `train_iterator()` (grain, checkpointable),
`eval_iterator()`, `token_bytes`, `tokenizer`, and, where the data needs the
model, `attach(training, state)` (called once before the first step), `device_batch(state,
local)` (PPO: the batch depends on the policy) and `evaluate(state)`.

The tokenizer is `tokenizer.path`, or the one saved with `train.init_from` (ours or an
imported Hugging Face one; `llm_jax.train.data.run_tokenizer`). Records are read and encoded when the run starts; what was dropped and
why is printed, saved as `<run_dir>/post_data.json`, and stops the run when there is too much
of it (`post.max_skipped_fraction`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from llm_jax.config import Config, ConfigError
from llm_jax.data.chat_format import Encoded, Message, make_template
from llm_jax.data.instructions import conversations, prompt_messages
from llm_jax.data.post_pipeline import (
    EncodedPair,
    host_split,
    ordered_pair_batches,
    preference_batches,
    prompt_index_batches,
    sft_batches,
)
from llm_jax.data.preference import preference_pair
from llm_jax.data.records import RecordError, SkipReport, read_records
from llm_jax.errors import UserError
from llm_jax.parallel.sharding import sharding_context
from llm_jax.train.data import TrainingData, run_tokenizer
from llm_jax.train.dpo import reply_logprobs
from llm_jax.train.forward import make_forward
from llm_jax.train.objective_eval import make_objective_eval, to_global
from llm_jax.train.preference_batch import split_sides
from llm_jax.train.rewards import load_reward_function
from llm_jax.train.rollout import Prompt, Rollouts, load_reward_model, rollout_seed

REPORT_FILE = "post_data.json"


def with_system(messages: list[Message], system: str) -> list[Message]:
    if not system or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": system}] + messages


class PostTrainingData:
    """What every post-training data object shares: tokenizer, template, report."""

    what = ""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.tokenizer = run_tokenizer(config)
        if self.tokenizer.vocab_size > config.model.vocab_size:
            raise ConfigError(f"the tokenizer has {self.tokenizer.vocab_size} tokens but "
                              f"model.vocab_size={config.model.vocab_size}")
        self.template = make_template(config.post.template, self.tokenizer)
        self.report = SkipReport(f"{config.train.objective} data ({self.template.name} template)")
        self.token_bytes = None
        self.process_index, self.process_count = jax.process_index(), jax.process_count()
        if config.train.batch_size % self.process_count:
            raise ConfigError(f"train.batch_size={config.train.batch_size} is not divisible by "
                              f"the {self.process_count} hosts")
        self.local_batch = config.train.batch_size // self.process_count

    def _read(self) -> None:
        """Encodes every record with `self._encode`, counting what is dropped, then checks."""
        for record in read_records(self.config.post.data, self.report):
            try:
                self._encode(record.value)
            except RecordError as err:
                self.report.skip(record, err)
        if self.process_index == 0:
            print(self.report.summary())
            self.report.save(Path(self.config.run_dir) / REPORT_FILE)
        self.report.check(self.config.post.max_skipped_fraction)

    def _encode(self, value: dict) -> None:
        raise NotImplementedError

    def _split_args(self) -> dict[str, Any]:
        return dict(batch_size=self.local_batch, seed=self.config.seed,
                    eval_fraction=self.config.post.eval_fraction,
                    shuffle=self.config.data.shuffle, process_index=self.process_index,
                    process_count=self.process_count)


# ---------------------------------------------------------------------------------------------


class SftData(PostTrainingData):
    """Conversations encoded with the chat template; loss on the assistant's tokens only."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.examples: list[Encoded] = []
        self._read()

    def _encode(self, value: dict) -> None:
        seq_len = self.config.data.seq_len
        for messages in conversations(value):
            encoded = self.template.encode(with_system(messages, self.config.post.system))
            trained = np.flatnonzero(encoded.weights)
            if len(trained) == 0:
                raise RecordError("empty_completion", "the reply encodes to no tokens")
            if trained[0] >= seq_len:
                raise RecordError("prompt_too_long", f"the prompt has {trained[0]} tokens; "
                                  f"data.seq_len={seq_len}")
            if len(encoded) - 1 > seq_len:
                raise RecordError("too_long", f"{len(encoded)} tokens > data.seq_len + 1 = "
                                  f"{seq_len + 1}")
            self.examples.append(encoded)
            self.report.examples += 1

    def _batches(self, split: str):
        return sft_batches(self.examples, split=split, seq_len=self.config.data.seq_len,
                           pad_id=self.tokenizer.pad_id, packing=self.config.post.packing,
                           **self._split_args())

    def train_iterator(self):
        return self._batches("train")

    def eval_iterator(self):
        return self._batches("eval") if self.config.post.eval_fraction else iter(())


# ---------------------------------------------------------------------------------------------


class PreferenceData(PostTrainingData):
    """Preference pairs for DPO and the reward model."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.pairs: list[EncodedPair] = []
        precomputed = config.train.objective == "dpo" and config.dpo.reference == "precomputed"
        # Filled by `attach` before the first batch is drawn; the pipeline reads it lazily.
        self.reference: dict[int, tuple[float, float]] | None = {} if precomputed else None
        self._evaluate = None
        self._read()

    def _encode(self, value: dict) -> None:
        seq_len = self.config.data.seq_len
        pair = preference_pair(value, chat=self.template.name != "none")
        prompt = self.template.encode_prompt(with_system(pair.prompt, self.config.post.system))
        chosen = self.template.encode_reply(pair.chosen).tokens
        rejected = self.template.encode_reply(pair.rejected).tokens
        if len(prompt) >= seq_len:
            raise RecordError("prompt_too_long", f"the prompt has {len(prompt)} tokens; "
                              f"data.seq_len={seq_len}")
        room = seq_len - len(prompt)
        if max(len(chosen), len(rejected)) > room:
            chosen, rejected = chosen[:room], rejected[:room]
            if np.array_equal(chosen, rejected):
                raise RecordError("identical_after_truncation",
                                  f"the replies differ only after data.seq_len={seq_len}")
            self.report.note("replies_truncated")
        self.pairs.append(EncodedPair(prompt, chosen, rejected))
        self.report.examples += 1

    def _batches(self, split: str):
        return preference_batches(self.pairs, split=split, seq_len=self.config.data.seq_len,
                                  pad_id=self.tokenizer.pad_id, reference=self.reference,
                                  **self._split_args())

    def train_iterator(self):
        return self._batches("train")

    def eval_iterator(self):
        return self._batches("eval") if self.config.post.eval_fraction else iter(())

    def attach(self, training: Any, state: Any) -> None:
        self._evaluate = make_objective_eval(training)
        if self.reference is not None:
            self._precompute_reference(training, state)

    def evaluate(self, state: Any) -> dict[str, float]:
        return self._evaluate(state, self.eval_iterator(), self.config.eval.steps)

    def _precompute_reference(self, training: Any, state: Any) -> None:
        """dpo.reference=precomputed: the initial policy's summed reply log-probs of every
        pair, in one pass before the first step, saved so that a resumed run reuses them."""
        path = Path(self.config.run_dir) / f"reference_logps.{self.process_index}.npz"
        if int(jax.device_get(state.step)) > 0:
            if not path.exists():
                raise UserError(f"resuming dpo.reference=precomputed needs {path}, written when "
                                "the run started; it is missing")
            saved = np.load(path)
            self.reference.update({int(i): (float(c), float(r)) for i, c, r in
                                   zip(saved["index"], saved["chosen"], saved["rejected"])})
            return
        forward = make_forward(self.config, training.mesh)
        logps = jax.jit(lambda params, batch: reply_logprobs(forward, params, batch))  # [2B]
        args = self._split_args()
        for split in ("train", "eval"):
            indices = host_split(len(self.pairs), self.config.post.eval_fraction, split,
                                 self.process_index, self.process_count)
            for chunk, batch in ordered_pair_batches(self.pairs, indices,
                                                     self.config.data.seq_len,
                                                     args["batch_size"], self.tokenizer.pad_id):
                with sharding_context(training.mesh, training.rules):
                    chosen, rejected = split_sides(np.asarray(jax.device_get(
                        logps(state.params, to_global(batch, training.batch_sharding)))))
                for k, index in enumerate(chunk):
                    self.reference[int(index)] = (float(chosen[k]), float(rejected[k]))
        index = np.asarray(sorted(self.reference), np.int64)
        np.savez(path, index=index, chosen=[self.reference[i][0] for i in index],
                 rejected=[self.reference[i][1] for i in index])


# ---------------------------------------------------------------------------------------------


class RolloutSchedule:
    """Tells the loop, step by step, when to sample a new rollout and which update of it to
    take: `{"index": prompt indices, "update": 0}` starts a rollout, `{"update": u}` continues.

    Its state points at the prompts of the rollout in progress, so a resumed run samples that
    rollout again (from the restored policy) and continues with the update where it stopped.
    """

    def __init__(self, prompts: Any, updates: int) -> None:
        self.prompts, self.updates = prompts, updates
        self.position = 0
        self._before = prompts.get_state()
        self._resample = False

    def __iter__(self) -> "RolloutSchedule":
        return self

    def __next__(self) -> dict[str, Any]:
        if self.position == 0 or self._resample:
            self._before = self.prompts.get_state()
            out = {"index": next(self.prompts)["index"], "update": self.position}
            self._resample = False
        else:
            out = {"update": self.position}
        self.position = (self.position + 1) % self.updates
        return out

    def get_state(self) -> dict[str, Any]:
        if self.position == 0:
            return {"prompts": self.prompts.get_state(), "update": 0}
        return {"prompts": self._before, "update": self.position}

    def set_state(self, state: dict[str, Any]) -> None:
        self.prompts.set_state(state["prompts"])
        self._before = state["prompts"]
        self.position = int(state["update"])
        self._resample = self.position != 0


class PromptData(PostTrainingData):
    """Prompts for PPO / GRPO; each train batch is cut from a rollout of the current policy."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        cfg = config.ppo
        self.prompts: list[Prompt] = []
        self.rows_per_rollout = config.train.batch_size * cfg.minibatches
        group = cfg.group_size if cfg.algorithm == "grpo" else 1
        if (self.rows_per_rollout // self.process_count) % group:
            raise ConfigError(f"ppo.group_size={group} must divide the rollout rows of each host "
                              f"(train.batch_size x ppo.minibatches / hosts)")
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
        args["batch_size"] = self.rows_per_rollout // self.process_count // self.group
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
        if Path(spec).is_dir():
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
        """A new rollout when the schedule says so; then this update's rows of it."""
        cfg = self.config.ppo
        if "index" in local:
            self._rollout_step = int(jax.device_get(state.step))
            indices = np.repeat(np.asarray(local["index"]), self.group)
            rows = self.rollouts.sample(state.params, indices,
                                        rollout_seed(self.config.seed, self._rollout_step))
            self._experience = self.rollouts.experience(state, rows)
        elif self._experience is None:
            raise RuntimeError("a PPO update was asked for before any rollout")
        epoch, minibatch = divmod(int(local["update"]), cfg.minibatches)
        rows_here = len(self._experience["tokens"])
        order = np.random.default_rng([self.config.seed, self._rollout_step, epoch,
                                       self.process_index]).permutation(rows_here)
        rows = order[minibatch * self.local_batch:(minibatch + 1) * self.local_batch]
        return to_global({name: value[rows] for name, value in self._experience.items()},
                         self._batch_sharding)

    def evaluate(self, state: Any) -> dict[str, float]:
        """Greedy replies to the held-out prompts: their mean score and length."""
        scores, lengths = [], []
        for _, batch in zip(range(self.config.eval.steps), self.eval_iterator()):
            indices = [int(i) for i in batch["index"] if i >= 0]
            if not indices:
                continue
            padded = indices + [indices[0]] * (self.local_batch - len(indices))
            rows = self.rollouts.sample(state.params, padded, seed=0, greedy=True)
            scores.extend(self.rollouts.scores(rows)[:len(indices)].tolist())
            lengths.extend(rows["response_mask"].sum(axis=1)[:len(indices)].tolist())
        if not scores:
            return {}
        return {"eval_score": float(np.mean(scores)),
                "eval_response_length": float(np.mean(lengths))}


def training_data(config: Config) -> Any:
    """The data object for `config.train.objective`."""
    objective = config.train.objective
    if objective == "lm":
        return TrainingData(config)
    if not config.post.data:
        raise UserError(f"train.objective={objective} reads post.data (JSONL records); set it")
    if objective == "sft":
        return SftData(config)
    if objective in ("dpo", "reward"):
        return PreferenceData(config)
    return PromptData(config)

