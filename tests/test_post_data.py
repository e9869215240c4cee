"""Post-training records: every kind is read, bad records are counted (or stop the run), SFT
rows are packed without attention or loss across examples, HH-RLHF dialogues are split."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from post_training_factory import MODEL, train_chat_tokenizer, write_jsonl

from llm_jax.config import load_config
from llm_jax.data.instructions import conversations
from llm_jax.data.preference import hh_turns, preference_pair, split_hh_dialogues
from llm_jax.data.records import RecordError
from llm_jax.errors import UserError
from llm_jax.model import Transformer, init_params
from llm_jax.train.preference_data import PreferenceData
from llm_jax.train.prompt_data import PromptData
from llm_jax.train.sft_data import SftData


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    return train_chat_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.model")


def config_for(tmp_path, tokenizer_path, objective, data, *extra):
    return load_config("tiny", MODEL + [
        f"run_dir={tmp_path / 'run'}", f"tokenizer.path={tokenizer_path}",
        f"train.objective={objective}", f"post.data={data}", "train.batch_size=4", *extra])


def test_every_instruction_kind_becomes_conversations():
    assert conversations({"messages": [{"role": "user", "content": "a"},
                                       {"role": "assistant", "content": "b"}]})[0][1] == {
        "role": "assistant", "content": "b"}
    alpaca = conversations({"instruction": "Reverse", "input": "abc", "output": "cba"})
    assert alpaca == [[{"role": "user", "content": "Reverse\n\nabc"},
                       {"role": "assistant", "content": "cba"}]]
    seed = conversations({"instruction": "Reverse", "instances": [
        {"input": "ab", "output": "ba"}, {"input": "", "output": "nothing"}]})
    assert [c[0]["content"] for c in seed] == ["Reverse\n\nab", "Reverse"]
    assert conversations({"prompt": "p", "completion": "c"})[0][1]["content"] == "c"
    assert conversations({"question": "1+1?", "answer": "2"})[0][0]["content"] == "1+1?"


@pytest.mark.parametrize("record, reason", [
    ({"instruction": "Reverse"}, "missing_fields"),
    ({"prompt": "abc", "completion": "  "}, "empty_completion"),
    ({"messages": [{"role": "user", "content": "a"}]}, "missing_fields"),
    ({"messages": [{"role": "robot", "content": "a"}]}, "bad_role"),
    ({"text": "unrelated"}, "missing_fields"),
])
def test_bad_records_say_why(record, reason):
    with pytest.raises(RecordError) as err:
        conversations(record)
    assert err.value.reason == reason


def test_bad_sft_records_are_counted_and_reported(tmp_path, tokenizer_path):
    good = [{"prompt": "abc", "completion": "cba"}] * 16
    bad = [{"prompt": "abc"}, {"prompt": "abc", "completion": ""},
           {"prompt": "x" * 80, "completion": "y"}]
    path = write_jsonl(tmp_path / "sft.jsonl", good + bad)
    with open(path, "a") as f:
        f.write("{not json\n")
    data = SftData(config_for(tmp_path, tokenizer_path, "sft", path,
                              "post.max_skipped_fraction=0.5"))
    assert len(data.examples) == 16
    report = json.loads((tmp_path / "run" / "post_data.json").read_text())
    assert report["skipped"] == {"missing_fields": 1, "empty_completion": 1,
                                 "prompt_too_long": 1, "malformed_json": 1}
    assert report["records"] == 20 and report["examples"] == 16
    # with the default threshold this much bad data stops the run, naming the reasons
    with pytest.raises(UserError, match="unusable.*prompt too long"):
        SftData(config_for(tmp_path, tokenizer_path, "sft", path))


def test_nothing_usable_is_an_error(tmp_path, tokenizer_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "abc"}] * 3)
    with pytest.raises(UserError, match="nothing to train on"):
        SftData(config_for(tmp_path, tokenizer_path, "sft", path, "post.max_skipped_fraction=1"))


def test_packed_rows_keep_examples_apart(tmp_path, tokenizer_path):
    """Each example in a packed row gets exactly the logits it gets alone, and the loss mask
    covers its reply and end marker only."""
    records = [{"prompt": w, "completion": w[::-1]} for w in ("abc", "hello", "xy", "jkl") * 4]
    config = config_for(tmp_path, tokenizer_path, "sft", write_jsonl(tmp_path / "s.jsonl", records),
                        "post.eval_fraction=0")
    data = SftData(config)
    batch = next(data.train_iterator())
    assert set(batch) == {"inputs", "targets", "segment_ids", "positions", "loss_mask"}
    params = jax.jit(init_params, static_argnums=0)(config.model, jax.random.key(0))
    apply = jax.jit(Transformer(config.model).apply)
    packed = apply({"params": params}, jnp.asarray(batch["inputs"]),
                   jnp.asarray(batch["positions"]), jnp.asarray(batch["segment_ids"]))
    rows_with_two = 0
    for row in range(2):
        segments = [s for s in np.unique(batch["segment_ids"][row]) if s > 0]
        rows_with_two += len(segments) > 1
        for segment in segments:
            where = batch["segment_ids"][row] == segment
            alone = apply({"params": params}, jnp.asarray(batch["inputs"][row][where])[None])
            np.testing.assert_allclose(packed[row][where], alone[0], atol=1e-5)
            assert batch["positions"][row][where].tolist() == list(range(where.sum()))
            trained = batch["targets"][row][where][batch["loss_mask"][row][where] > 0]
            reply = data.tokenizer.decode(trained.tolist())
            assert reply.endswith("<|im_end|>")
            assert reply[:-len("<|im_end|>")] in {r["completion"] for r in records}
    assert rows_with_two > 0


HH = {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how to x?\n\nAssistant: Like this.",
      "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how to x?\n\nAssistant: No."}


def test_hh_rlhf_pairs_split_at_the_last_shared_assistant_turn():
    prompt, chosen, rejected = split_hh_dialogues(HH["chosen"], HH["rejected"])
    assert prompt.endswith("how to x?\n\nAssistant:")
    assert (chosen, rejected) == (" Like this.", " No.")
    assert hh_turns(prompt) == [{"role": "user", "content": "hi"},
                                {"role": "assistant", "content": "hello"},
                                {"role": "user", "content": "how to x?"}]
    pair = preference_pair(HH)
    assert (pair.chosen, pair.rejected) == ("Like this.", "No.") and len(pair.prompt) == 3
    raw = preference_pair(HH, chat=False)  # no template: the dialogue stays text
    assert raw.prompt == [{"role": "user", "content": prompt}] and raw.chosen == " Like this."
    with pytest.raises(RecordError, match="no_shared_prompt"):
        preference_pair({"chosen": "\n\nHuman: a", "rejected": "\n\nHuman: b"})
    with pytest.raises(RecordError, match="identical_pair"):
        preference_pair({"prompt": "p", "chosen": "same", "rejected": "same"})


def test_bad_preference_and_prompt_records_are_counted(tmp_path, tokenizer_path):
    pairs = [{"prompt": "abc", "chosen": "cba", "rejected": "bca"}] * 12 + [
        {"prompt": "abc", "chosen": "cba"},  # missing rejected
        {"prompt": "abc", "chosen": "", "rejected": "x"},
        {"prompt": "a" * 70, "chosen": "b", "rejected": "c"},
        {"prompt": "abc", "chosen": "c" * 60 + "x", "rejected": "c" * 60 + "y"}]
    data = PreferenceData(config_for(tmp_path, tokenizer_path, "dpo",
                                     write_jsonl(tmp_path / "p.jsonl", pairs),
                                     "post.max_skipped_fraction=0.5"))
    assert len(data.pairs) == 12
    assert dict(data.report.skipped) == {"missing_fields": 1, "empty_completion": 1,
                                         "prompt_too_long": 1, "identical_after_truncation": 1}
    prompts = [{"prompt": "abc"}] * 8 + [{"prompt": "a" * 40}, {"messages": []}]
    data = PromptData(config_for(tmp_path, tokenizer_path, "ppo",
                                 write_jsonl(tmp_path / "q.jsonl", prompts),
                                 "post.max_skipped_fraction=0.5", "ppo.max_new_tokens=30"))
    assert len(data.prompts) == 8
    assert dict(data.report.skipped) == {"prompt_too_long": 1, "missing_fields": 1}


def test_preference_rows_hold_prompt_and_reply(tmp_path, tokenizer_path):
    pairs = [{"prompt": "abc", "chosen": "cba", "rejected": "bca"}] * 8
    data = PreferenceData(config_for(tmp_path, tokenizer_path, "reward",
                                     write_jsonl(tmp_path / "p.jsonl", pairs),
                                     "post.eval_fraction=0"))
    batch = next(data.train_iterator())
    for side, reply in (("chosen", "cba"), ("rejected", "bca")):
        tokens, mask = batch[f"{side}_tokens"][0], batch[f"{side}_mask"][0]
        real = batch[f"{side}_segment_ids"][0] > 0
        assert data.tokenizer.decode(tokens[mask > 0].tolist()) == reply + "<|im_end|>"
        assert data.tokenizer.decode(tokens[real].tolist()).startswith("<|im_start|>user\nabc")
        assert not mask[~real].any()


@pytest.mark.parametrize("objective", ["sft", "dpo", "reward", "ppo"])
def test_presets_name_their_objective_and_need_data(objective, tmp_path, tokenizer_path):
    from llm_jax.train.post_data import training_data

    config = load_config(f"{objective}-tiny", [f"run_dir={tmp_path}",
                                               f"tokenizer.path={tokenizer_path}"])
    assert config.train.objective == objective
    with pytest.raises(UserError, match="post.data"):
        training_data(config)
