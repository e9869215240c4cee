"""Evaluation: log-likelihoods equal transformers', rolling windows equal lm-evaluation-harness',
perplexity / bits per byte, multiple choice, GSM8K exact match, and `llm-jax eval` on both an
imported Hugging Face model and our own checkpoint."""

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from checkpoint_factory import TEXT, imported_checkpoint, own_checkpoint  # noqa: E402

from llm_jax.cli import main  # noqa: E402
from llm_jax.errors import UserError  # noqa: E402
from llm_jax.eval import gsm8k  # noqa: E402
from llm_jax.eval.documents import read_documents  # noqa: E402
from llm_jax.eval.encoding import encode_pair  # noqa: E402
from llm_jax.eval.loglikelihood import Scorer, rolling_requests  # noqa: E402
from llm_jax.eval.multiple_choice import ChoiceExample, evaluate_multiple_choice  # noqa: E402
from llm_jax.eval.perplexity import evaluate_perplexity  # noqa: E402
from llm_jax.infer.loading import load_model  # noqa: E402

WORD_DOC = " ".join(f"w{3 + (i * 7) % 97}" for i in range(60))


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    ckpt, hf = imported_checkpoint(tmp_path_factory.mktemp("hf"))
    model = load_model(ckpt)
    return ckpt, hf, model, Scorer(model.config.model, model.params, batch_size=4)


def hf_logprob(hf, context, continuation):
    """Sum of transformers' log-probabilities of `continuation` after `context`."""
    ids = torch.tensor([list(context) + list(continuation)])
    with torch.no_grad():
        logprobs = torch.log_softmax(hf(ids).logits[0].double(), -1)
    start = len(context)
    return sum(logprobs[start - 1 + i, t].item() for i, t in enumerate(continuation))


def test_scores_equal_transformers_log_probabilities(imported):
    _, hf, model, scorer = imported
    pairs = [encode_pair(model.tokenizer, "w5 w9 w33", " w40 w41"),
             encode_pair(model.tokenizer, "", "w7"),
             encode_pair(model.tokenizer, "w8 " * 30, "w9 w10 w11")]
    assert pairs[1] == ([1], [7])  # an empty context is the BOS alone
    for (context, continuation), score in zip(pairs, scorer.score(pairs)):
        assert score.logprob == pytest.approx(hf_logprob(hf, context, continuation), abs=1e-3)


@pytest.mark.parametrize("length", [1, 5, 16, 17, 40, 64])
def test_rolling_windows_equal_lm_evaluation_harness(length):
    lm_eval_utils = pytest.importorskip("lm_eval.utils")
    tokens = list(range(10, 10 + length))
    theirs = list(lm_eval_utils.get_rolling_token_windows(tokens, 1, 16, 1))
    ours = [((ctx + cont)[:-1][-16:], cont) for ctx, cont in rolling_requests(tokens, 1, 16)]
    assert ours == [(list(i), list(p)) for i, p in theirs]


@pytest.mark.parametrize("stride", [4, 7, 16])
def test_every_token_is_scored_once_with_any_stride(stride):
    tokens = list(range(100, 150))
    requests = rolling_requests(tokens, 1, 16, stride)
    assert sum((cont for _, cont in requests), []) == tokens
    assert all(len(ctx) + len(cont) - 1 <= 16 for ctx, cont in requests)


def test_perplexity_equals_transformers_and_formulas(imported):
    _, hf, model, scorer = imported
    tokens = model.tokenizer.encode(WORD_DOC)
    expected = hf_logprob(hf, [1], tokens)
    result = evaluate_perplexity(scorer, model.tokenizer, [WORD_DOC])
    assert result["loglikelihood"] == pytest.approx(expected, abs=1e-3)
    assert result["tokens"] == 60 and result["bytes"] == len(WORD_DOC) and result["words"] == 60
    assert result["bits_per_byte"] == pytest.approx(expected / -len(WORD_DOC) / math.log(2))
    assert result["token_perplexity"] == pytest.approx(math.exp(-expected / 60), rel=1e-5)
    # Short windows lose context, so the text gets less likely; striding gives some back.
    narrow = evaluate_perplexity(scorer, model.tokenizer, [WORD_DOC], window=8)
    strided = evaluate_perplexity(scorer, model.tokenizer, [WORD_DOC], window=8, stride=2)
    assert narrow["tokens"] == strided["tokens"] == 60
    assert narrow["loglikelihood"] != pytest.approx(result["loglikelihood"])
    assert strided["loglikelihood"] != pytest.approx(narrow["loglikelihood"])


def test_multiple_choice_acc_and_acc_norm_from_transformers_scores(imported):
    _, hf, model, scorer = imported
    examples = [ChoiceExample("w5 w9", ["w10", "w11 w12 w13", "w14 w15"], 1),
                ChoiceExample("w20", ["w21 w22", "w23"], 0),
                ChoiceExample("w30 w31 w32", ["w33", "w34", "w35 w36"], 2)]
    acc, acc_norm = [], []
    for ex in examples:
        lls = np.array([hf_logprob(hf, *encode_pair(model.tokenizer, ex.context, " " + c))
                        for c in ex.choices])
        lengths = np.array([len(c) for c in ex.choices], float)
        acc.append(np.argmax(lls) == ex.gold)
        acc_norm.append(np.argmax(lls / lengths) == ex.gold)
    result = evaluate_multiple_choice(scorer, model.tokenizer, examples)
    assert result["acc"] == pytest.approx(np.mean(acc))
    assert result["acc_norm"] == pytest.approx(np.mean(acc_norm))


def test_gsm8k_answers_and_exact_match():
    assert gsm8k.strict_answer("so 3 + 4 = 7\n#### 1,234.") == "1234"
    assert gsm8k.strict_answer("no marker 12") is None
    assert gsm8k.flexible_answer("first 3 then $1,200.") == "1200"
    problems = [{"question": "q", "answer": "#### 72"}, {"question": "q", "answer": "#### -5"}]
    assert gsm8k.score_generations([" 70 + 2\n#### 72", " It is 5."], problems) == {
        "examples": 2, "exact_match_strict": 0.5, "exact_match_flexible": 0.5}


def test_gsm8k_references_score_perfectly_on_real_data(real_data):
    problems = gsm8k.load_problems(real_data / "gsm8k-test.jsonl")
    assert len(problems) == 20
    result = gsm8k.score_generations([p["answer"] for p in problems], problems)
    assert result["exact_match_strict"] == result["exact_match_flexible"] == 1.0


def test_cli_eval_on_imported_model(imported, tmp_path, capsys):
    ckpt, _, _, scorer = imported
    (tmp_path / "doc.txt").write_text(WORD_DOC)
    out = tmp_path / "result.json"
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(tmp_path / "doc.txt"),
                 "--batch-size", "4", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["task"] == "perplexity" and result["tokens"] == 60
    assert json.loads(capsys.readouterr().out) == result


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    return own_checkpoint(tmp_path_factory.mktemp("own") / "ckpt")


def test_cli_eval_on_own_checkpoint(own, tmp_path, capsys):
    (tmp_path / "a.txt").write_text(TEXT * 4)  # longer than one window
    (tmp_path / "b.jsonl").write_text(json.dumps({"body": "Knowledge is power."}) + "\n")
    assert main(["eval", "--checkpoint", str(own), "--data", str(tmp_path / "a.txt"),
                 "--data", f"jsonl:{tmp_path / 'b.jsonl'}", "--text-field", "body"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["documents"] == 2 and result["tokens"] > 128
    assert 0 < result["bits_per_byte"] < 20
    mc = tmp_path / "mc.jsonl"
    mc.write_text(json.dumps({"query": "Knowledge is", "choices": ["power", "gold"], "gold": 0}))
    assert main(["eval", "--checkpoint", str(own), "--task", "multiple_choice",
                 "--data", str(mc)]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == 1


def test_cli_gsm8k_on_real_data(own, real_data, capsys):
    data = str(real_data / "gsm8k-test.jsonl")
    assert main(["eval", "--checkpoint", str(own), "--task", "gsm8k", "--data", data,
                 "--limit", "2", "--max-new-tokens", "4"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["examples"] == 2 and 0 <= result["exact_match_strict"] <= 1


@pytest.mark.parametrize("args, message", [
    (["--task", "hellaswag_typo"], "unknown task 'hellaswag_typo'; tasks: perplexity"),
    ([], "task perplexity needs --data"),
    (["--data", "/nonexistent/*.txt"], "no file matches /nonexistent/"),
    (["--task", "gsm8k", "--data", "x.jsonl", "--num-fewshot", "2"], "does not exist"),
])
def test_bad_eval_input_is_a_clear_error(own, capsys, args, message):
    assert main(["eval", "--checkpoint", str(own), *args]) == 2
    assert message in capsys.readouterr().err


def test_missing_tfds_data_set_is_a_clear_error(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(UserError, match="cannot open TFDS data set 'llm_jax_no_such_set'"):
        read_documents("tfds:llm_jax_no_such_set:validation", tfds_data_dir=str(tmp_path))
