"""Chat templates: ChatML as generation writes it, Llama 3 as Meta's own template writes it
(rendered by transformers), and the loss falling on the assistant's tokens only."""

import numpy as np
import pytest
from post_training_factory import train_chat_tokenizer

from llm_jax.data.chat_format import make_template
from llm_jax.data.tokenizer import load_tokenizer
from llm_jax.errors import UserError
from llm_jax.infer.chat import chat_prompt

# Meta-Llama-3-8B-Instruct's chat template, as its tokenizer_config.json ships it: the reference
# our `llama3` template must reproduce.
META_LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

CONVERSATION = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "abc"},
    {"role": "assistant", "content": "cba"},
    {"role": "user", "content": "xyz"},
    {"role": "assistant", "content": "zyx"},
]


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    path = train_chat_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.model")
    return load_tokenizer(path.parent)


@pytest.fixture(scope="module")
def llama3_tokenizer(tmp_path_factory):
    """A word-level Hugging Face tokenizer with Llama 3's special tokens and Meta's template."""
    from checkpoint_factory import word_tokenizer

    hf = word_tokenizer()
    hf.add_special_tokens({"additional_special_tokens": LLAMA3_SPECIALS})
    hf.bos_token = "<|begin_of_text|>"
    hf.eos_token = "<|eot_id|>"
    hf.chat_template = META_LLAMA3_TEMPLATE
    directory = tmp_path_factory.mktemp("llama3")
    hf.save_pretrained(directory)
    return load_tokenizer(directory), hf


def trained_text(tokenizer, encoded):
    return tokenizer.decode(encoded.tokens[encoded.weights > 0])


def test_chatml_prompt_is_what_generation_encodes(ours):
    template = make_template("auto", ours)
    assert template.name == "chatml"
    prompt = CONVERSATION[:2]
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in prompt)
    text += "<|im_start|>assistant\n"
    assert template.encode_prompt(prompt).tolist() == ours.encode(text, bos=True)
    assert template.render(prompt, add_generation_prompt=True) == text
    assert chat_prompt(ours, prompt) == (ours.encode(text, bos=True), ("<|im_end|>",))


def test_generation_frames_chat_with_the_template_the_model_was_tuned_with(ours):
    """`generate --chat` on a model tuned with post.template=none gives it the bare prompt,
    as its SFT data had it, not ChatML."""
    user = [{"role": "user", "content": "stone apple tree"}]
    assert chat_prompt(ours, user, "none") == (ours.encode("stone apple tree", bos=True), ())
    assert chat_prompt(ours, user, "chatml")[0] == make_template(
        "chatml", ours).encode_prompt(user).tolist()


def test_chatml_loss_is_on_replies_and_their_end_marker(ours):
    template = make_template("chatml", ours)
    encoded = template.encode(CONVERSATION)
    assert encoded.tokens[0] == ours.bos_id
    assert trained_text(ours, encoded) == "cba<|im_end|>zyx<|im_end|>"
    # the whole conversation is the prompt followed by the reply, token for token
    prompt = template.encode_prompt(CONVERSATION[:4])
    reply = template.encode_reply("zyx")
    joined = np.concatenate([prompt, reply.tokens])
    assert encoded.tokens[:len(joined)].tolist() == joined.tolist()
    im_end = ours.encode("<|im_end|>")
    assert len(im_end) == 1 and im_end[0] in template.stop_ids


def test_llama3_matches_metas_template_in_transformers(llama3_tokenizer):
    ours, hf = llama3_tokenizer
    messages = [{"role": "system", "content": " w5 w6 "}, {"role": "user", "content": "w7 w8"},
                {"role": "assistant", "content": "w9 w10"}]
    template = make_template("auto", ours)
    assert template.name == "llama3"
    assert "<|begin_of_text|>" + template.render(messages) == hf.apply_chat_template(
        messages, tokenize=False)
    assert "<|begin_of_text|>" + template.render(messages[:2], add_generation_prompt=True) == (
        hf.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True))
    assert template.encode(messages).tokens.tolist() == list(
        hf.apply_chat_template(messages, tokenize=True, return_dict=False))
    assert template.encode_prompt(messages[:2]).tolist() == list(hf.apply_chat_template(
        messages[:2], tokenize=True, add_generation_prompt=True, return_dict=False))
    encoded = template.encode(messages)
    assert trained_text(ours, encoded).split() == ["w9", "w10", "<|eot_id|>"]
    assert hf.convert_tokens_to_ids("<|eot_id|>") in template.stop_ids


def test_llama3_needs_its_special_tokens(ours):
    with pytest.raises(UserError, match="Llama 3 special tokens"):
        make_template("llama3", ours)


def test_plain_template_trains_the_completion_and_eos(ours):
    template = make_template("none", ours)
    encoded = template.encode([{"role": "user", "content": "abc="},
                               {"role": "assistant", "content": "cba"}])
    reply = ours.encode(" cba")  # lm-evaluation-harness's target delimiter, trained
    assert encoded.tokens.tolist() == [ours.bos_id] + ours.encode("abc=") + reply + [
        ours.eos_id]
    prompt = len(ours.encode("abc=")) + 1
    assert encoded.weights.tolist() == [0.0] * prompt + [1.0] * (len(reply) + 1)
    kept = template.encode([{"role": "user", "content": "Q: 2+2?"},
                            {"role": "assistant", "content": "\nA: 4"}])
    assert kept.tokens.tolist() == [ours.bos_id, *ours.encode("Q: 2+2?"), *ours.encode("\nA: 4"),
                                    ours.eos_id]


def test_plain_template_reply_tokenizes_as_the_joined_text(ours):
    """Prompt and reply ids together are the ids of their text joined by a space, so each
    word of the reply has the ids it has in running text: the seam adds no odd pieces."""
    template = make_template("none", ours)
    prompt, reply = "stone apple tree", "tree apple stone"
    ids = [*template.encode_prompt([{"role": "user", "content": prompt}]),
           *template.encode_reply(reply).tokens[:-1]]
    assert ids == [ours.bos_id, *ours.encode(f"{prompt} {reply}")]
    assert template.render([{"role": "user", "content": prompt},
                            {"role": "assistant", "content": reply}]) == f"{prompt} {reply}"
