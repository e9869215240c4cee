"""lm-evaluation-harness runs our checkpoints, offline, with the numbers of our own eval.

The harness is driven through its real command line (`python -m llm_jax.eval.lm_eval_main`,
i.e. `lm_eval` with our model registered) on local YAML tasks over JSONL files: one
multiple-choice task (acc, acc_norm), one rolling log-likelihood task (bits per byte, word
and byte perplexity) and one generate-until task. Rolling log-likelihoods are compared with
lm-eval's own `hf` model on an imported `transformers` Llama.
"""

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="lm-eval is the [eval] extra: pip install -e .[eval]")

from checkpoint_factory import TEXT, WORDS, hf_model, own_checkpoint, word_tokenizer  # noqa: E402

from llm_jax.convert.hf_import import import_hf_checkpoint  # noqa: E402
from llm_jax.eval.gsm8k import prompt as gsm8k_prompt  # noqa: E402
from llm_jax.eval.harness import LlmJaxLM  # noqa: E402
from llm_jax.eval.loglikelihood import Scorer, total_logprob  # noqa: E402
from llm_jax.eval.perplexity import count_words  # noqa: E402
from llm_jax.eval.tasks import EvalOptions, run_task  # noqa: E402
from llm_jax.infer.completion import complete  # noqa: E402
from llm_jax.infer.loading import load_model  # noqa: E402
from llm_jax.infer.sampling import SamplingOptions  # noqa: E402
from llm_jax.parallel.launch import free_port, process_env  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

CHOICES = [
    {"query": "The early bird catches the", "choices": ["worm", "cloud", "stitch in time"], "gold": 0},
    {"query": "Actions speak louder than", "choices": ["gold", "words"], "gold": 1},
    {"query": "Birds of a feather flock", "choices": ["together", "apart", "over the lazy dog"], "gold": 0},
    {"query": "Honesty is the best", "choices": ["policy", "power", "bird"], "gold": 0},
    {"query": "Knowledge is", "choices": ["nine", "power"], "gold": 1},
    {"query": "Practice makes", "choices": ["perfect", "the bold", "worm"], "gold": 0},
]
DOCUMENTS = [{"text": TEXT}, {"text": TEXT * 3}, {"text": "Fortune favours the bold."}]
QUESTIONS = [{"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = 7\n#### 7"},
             {"question": "A stitch saves how many?", "answer": "#### 9"}]

TASK_YAML = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
{body}
"""
MC_BODY = """\
output_type: multiple_choice
doc_to_text: "{{query}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{gold}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""
ROLLING_BODY = """\
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""
GENERATE_BODY = """\
output_type: generate_until
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["Question:", "</s>", "<|im_end|>"]
  do_sample: false
  max_gen_toks: 12
metric_list:
  - metric: exact_match
"""


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def harness_env(root: Path) -> dict[str, str]:
    return {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
            "HF_HOME": str(root / "hf_home"), "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}


def harness_command(ckpt: Path, tasks: Path, names: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "llm_jax.eval.lm_eval_main", "--model", "llm_jax",
            "--model_args", f"checkpoint={ckpt}", "--tasks", names, "--include_path", str(tasks),
            "--batch_size", "4", "--output_path", str(out), "--log_samples"]


@pytest.fixture(scope="module")
def harness_run(tmp_path_factory):
    """One `lm_eval` command-line run over three local tasks; its results JSON and samples."""
    root = tmp_path_factory.mktemp("lm_eval")
    ckpt = own_checkpoint(root / "ckpt")
    tasks = root / "tasks"
    tasks.mkdir()
    for name, rows, body in [("llmjax_mc", CHOICES, MC_BODY),
                             ("llmjax_rolling", DOCUMENTS, ROLLING_BODY),
                             ("llmjax_generate", QUESTIONS, GENERATE_BODY)]:
        data = _jsonl(root / f"{name}.jsonl", rows)
        (tasks / f"{name}.yaml").write_text(TASK_YAML.format(name=name, data=data, body=body))
    out = root / "results"
    command = harness_command(ckpt, tasks, "llmjax_mc,llmjax_rolling,llmjax_generate", out)
    run = subprocess.run(command, cwd=REPO, env=harness_env(root), capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results_file = next(out.rglob("results_*.json"))
    samples = {path.name.split("_")[1] + "_" + path.name.split("_")[2]: path
               for path in out.rglob("samples_*.jsonl")}
    return ckpt, root, json.loads(results_file.read_text())["results"], samples


def test_on_two_processes_the_results_are_printed_and_written_once(harness_run, tmp_path):
    """Both processes score every request over one mesh of their 2 x 2 devices; process 0
    alone prints the table and writes the results, which are one process's."""
    ckpt, root, results, _ = harness_run
    port, out = free_port(), tmp_path / "results"
    command = harness_command(ckpt, root / "tasks", "llmjax_mc", out)
    children = [subprocess.Popen(command, cwd=REPO, env=process_env(i, 2, 2, port,
                                                                    base=harness_env(root)),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for i in range(2)]
    outputs = [child.communicate(timeout=600) for child in children]
    assert [child.returncode for child in children] == [0, 0], outputs[1][1][-3000:]
    assert "llmjax_mc" in outputs[0][0] and "llmjax_mc" not in outputs[1][0]
    written = list(out.rglob("results_*.json"))
    assert len(written) == 1 and len(list(out.rglob("samples_*.jsonl"))) == 1
    got = json.loads(written[0].read_text())["results"]["llmjax_mc"]
    assert got["acc,none"] == pytest.approx(results["llmjax_mc"]["acc,none"])
    assert got["acc_norm,none"] == pytest.approx(results["llmjax_mc"]["acc_norm,none"])


@pytest.fixture(scope="module")
def own_model(harness_run):
    return load_model(harness_run[0])


def test_multiple_choice_accuracy_equals_our_eval(harness_run, own_model):
    _, root, results, _ = harness_run
    ours = run_task("multiple_choice", own_model,
                    EvalOptions(data=(str(root / "llmjax_mc.jsonl"),), batch_size=4))
    theirs = results["llmjax_mc"]
    assert ours["examples"] == len(CHOICES)
    assert theirs["acc,none"] == pytest.approx(ours["acc"], abs=1e-9)
    assert theirs["acc_norm,none"] == pytest.approx(ours["acc_norm"], abs=1e-9)
    assert theirs["acc_stderr,none"] == pytest.approx(ours["acc_stderr"], rel=1e-6)


def test_rolling_metrics_score_the_bos_that_the_exported_tokenizer_adds(harness_run, own_model):
    """lm-eval's `hf` model scores a document as the Llama tokenizer encodes it, BOS included,
    after its own prefix BOS; our eval scores the text alone, in the same windows."""
    _, _, results, _ = harness_run
    tokenizer = own_model.tokenizer
    texts = [doc["text"] for doc in DOCUMENTS]
    scorer = Scorer(own_model.config.model, own_model.params, batch_size=4)
    with_bos = [tokenizer.encode(text, bos=True) for text in texts]
    assert max(len(tokens) for tokens in with_bos) > 2 * scorer.max_length  # several windows
    logprob = sum(total_logprob(scorer, with_bos, tokenizer.bos_id))
    n_bytes = sum(len(text.encode("utf-8")) for text in texts)
    n_words = sum(count_words(text) for text in texts)
    expected = {"bits_per_byte": -logprob / n_bytes / math.log(2),
                "byte_perplexity": math.exp(-logprob / n_bytes),
                "word_perplexity": math.exp(-logprob / n_words)}
    theirs = results["llmjax_rolling"]
    for metric, value in expected.items():
        assert theirs[f"{metric},none"] == pytest.approx(value, rel=1e-6), metric


def test_generate_until_equals_our_generation(harness_run, own_model):
    *_, samples = harness_run
    logged = [json.loads(line) for line in samples["llmjax_generate"].read_text().splitlines()]
    logged.sort(key=lambda s: s["doc_id"])
    options = SamplingOptions(max_new_tokens=12, stop=("Question:", "</s>", "<|im_end|>"))
    prompts = [gsm8k_prompt(q["question"]) for q in QUESTIONS]
    # Short enough that the harness' left truncation (context - max_gen_toks) keeps them whole.
    assert max(len(own_model.tokenizer.encode(p)) for p in prompts) < 128 - 12
    ours = complete(own_model.generator(), own_model.tokenizer, prompts, options)
    assert [s["resps"][0][0] for s in logged] == [c.text for c in ours]


def bos_word_tokenizer():
    """The word-level tokenizer with BOS added by default, as Llama tokenizers do."""
    from tokenizers import processors

    tokenizer = word_tokenizer()
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)])
    return tokenizer


def word_documents() -> list[str]:
    """Documents around and beyond the context of 128 tokens, so several windows occur (one
    word is one token), an empty one and one that already starts with the BOS."""
    rng = random.Random(0)
    words = [" ".join(rng.choice(WORDS[3:]) for _ in range(n))
             for n in (5, 126, 127, 128, 129, 300, 400)]
    return words + ["", "<s> w5 w9 w33 w40"]


@pytest.fixture(scope="module")
def imported_llama(tmp_path_factory):
    """(the saved `transformers` Llama directory, our checkpoint imported from it)."""
    root = tmp_path_factory.mktemp("imported_llama")
    hf_model().save_pretrained(root / "hf")
    bos_word_tokenizer().save_pretrained(root / "hf")
    return root / "hf", import_hf_checkpoint(root / "hf", root / "ours")


@pytest.mark.parametrize("max_length", [None, 48])
def test_rolling_loglikelihood_equals_lm_evals_hf_model(imported_llama, max_length):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    hf_dir, ours = imported_llama
    requests = [Instance("loglikelihood_rolling", {}, (text,), i)
                for i, text in enumerate(word_documents())]
    reference = HFLM(pretrained=str(hf_dir), device="cpu", dtype="float32", batch_size=4,
                     max_length=max_length)
    adapter = LlmJaxLM(checkpoint=str(ours), batch_size=4, max_length=max_length)
    assert adapter.max_length == reference.max_length == (max_length or 128)
    assert reference.tok_encode("w5 w9")[0] == 1  # the tokenizer adds BOS, scored as text
    theirs = reference.loglikelihood_rolling(requests)
    mine = adapter.loglikelihood_rolling(requests)
    for text, expected, got in zip(word_documents(), theirs, mine):
        assert got == pytest.approx(expected, abs=1e-3), text[:40]
