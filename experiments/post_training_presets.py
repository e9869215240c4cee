"""Do the tiny post-training presets learn a held-out task within their default steps?

The task is new to every test and preset: reverse the order of three words ("stone apple tree"
-> "tree apple stone"), 4,000 SFT records under `post.template=none`, its words drawn from
English prose the pretrained model read (Python's own documentation), 400 for training and
100 never in a training record. `sft-tiny` trains at each learning rate of the sweep (the rates
as one ensemble, `llm_jax.train.ensemble`), then `dpo-tiny` trains from the best SFT model on
(reversed, same order or rotated) pairs of the training words, at each of its rates.

Each model is scored on held-out prompts two ways: greedy generation's exact match, and 3-way
multiple choice by log-likelihood (reversed / same order / rotated, lm-evaluation-harness's
`acc`). "New words": triples of the 100 held-out words; "new triples": combinations of training
words that no training record has.

    llm-jax quickstart      # runs/quickstart, the starting checkpoint
    python experiments/post_training_presets.py --checkpoint runs/quickstart
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import re
import time
from pathlib import Path

SFT_RATES = (1e-3, 3e-3, 1e-2)
DPO_RATES = (5e-5, 5e-4)
RECORDS, HELD_OUT = 4000, 200


def english_words(count: int) -> list[str]:
    """The most frequent lowercase words of 3 to 7 letters in Python's documentation topics."""
    from pydoc_data.topics import topics

    counts = collections.Counter(re.findall(r"\b[a-z]{3,7}\b", " ".join(topics.values())))
    return sorted(word for word, _ in counts.most_common(count))


def orders(triple: tuple[str, str, str]) -> list[str]:
    """The choices: reversed (the answer), the same order, rotated by one."""
    a, b, c = triple
    return [f"{c} {b} {a}", f"{a} {b} {c}", f"{b} {c} {a}"]


def make_task(out: Path, seed: int = 0) -> dict[str, list[tuple[str, str, str]]]:
    rng = random.Random(seed)
    words = english_words(500)
    rng.shuffle(words)
    seen, unseen = words[:400], words[400:]
    triples = lambda pool: tuple(rng.sample(pool, 3))  # noqa: E731
    train = list(dict.fromkeys(triples(seen) for _ in range(RECORDS * 2)))[:RECORDS]
    trained = set(train)
    new_triples = []
    while len(new_triples) < HELD_OUT:
        candidate = triples(seen)
        if candidate not in trained and candidate not in new_triples:
            new_triples.append(candidate)
    task = {"train": train, "new words": [triples(unseen) for _ in range(HELD_OUT)],
            "new triples": new_triples}
    out.mkdir(parents=True, exist_ok=True)
    with (out / "sft.jsonl").open("w") as f:
        for t in train:
            f.write(json.dumps({"prompt": " ".join(t), "completion": orders(t)[0]}) + "\n")
    with (out / "pairs.jsonl").open("w") as f:
        for i, t in enumerate(train):
            right, same, rotated = orders(t)
            f.write(json.dumps({"prompt": " ".join(t), "chosen": right,
                                "rejected": same if i % 2 else rotated}) + "\n")
    return task


def score(run_dir: Path, task: dict) -> dict[str, float]:
    """Exact match of greedy replies and 3-way multiple-choice accuracy, per held-out set."""
    from llm_jax.eval.loglikelihood import Scorer
    from llm_jax.eval.multiple_choice import ChoiceExample, evaluate_multiple_choice
    from llm_jax.infer.completion import complete
    from llm_jax.infer.loading import load_model
    from llm_jax.infer.sampling import SamplingOptions

    model = load_model(run_dir)
    scorer = Scorer(model.config.model, model.params, batch_size=32)
    result = {}
    for name in ("new words", "new triples"):
        prompts = [" ".join(t) for t in task[name]]
        replies = complete(model.generator(), model.tokenizer, prompts,
                           SamplingOptions(max_new_tokens=16), chat=True, template="none")
        result[f"{name}: exact match"] = sum(
            r.text.strip() == orders(t)[0] for r, t in zip(replies, task[name])) / len(prompts)
        examples = [ChoiceExample(p, orders(t), 0) for p, t in zip(prompts, task[name])]
        result[f"{name}: 3-way accuracy"] = evaluate_multiple_choice(
            scorer, model.tokenizer, examples)["acc"]
    return result


def train_sft(checkpoint: str, out: Path, overrides: list[str]) -> list[Path]:
    from llm_jax.config import load_config
    from llm_jax.train.ensemble_loop import train_ensemble
    from llm_jax.train.post_data import training_data

    configs = [load_config("sft-tiny", [f"train.init_from={checkpoint}", "post.template=none",
                                        f"post.data={out / 'sft.jsonl'}", f"optimizer.lr={lr}",
                                        f"run_dir={out / f'sft-lr{lr:g}'}", *overrides])
               for lr in SFT_RATES]
    if not all((Path(c.run_dir) / "checkpoints").exists() for c in configs):
        train_ensemble(configs, [training_data(c) for c in configs], out / "sft-ensemble")
    return [Path(c.run_dir) for c in configs]


def train_dpo(start: Path, out: Path, overrides: list[str]) -> list[Path]:
    from llm_jax.config import load_config
    from llm_jax.experiment_data import train_unless_finished

    runs = []
    for lr in DPO_RATES:
        config = load_config("dpo-tiny", [f"train.init_from={start}", "post.template=none",
                                          f"post.data={out / 'pairs.jsonl'}", f"optimizer.lr={lr}",
                                          f"run_dir={out / f'dpo-lr{lr:g}'}", *overrides])
        train_unless_finished(config)
        runs.append(Path(config.run_dir))
    return runs


def table(rows: list[tuple[str, dict]]) -> str:
    columns = list(rows[0][1])
    lines = [f"| model | {' | '.join(columns)} |", "|---|" + "---|" * len(columns)]
    lines += [f"| {name} | " + " | ".join(f"{v:.3f}" for v in values.values()) + " |"
              for name, values in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/quickstart")
    parser.add_argument("--out", default="results/post_training_presets")
    parser.add_argument("overrides", nargs="*", help="key.sub=value for every run")
    args = parser.parse_args()
    out = Path(args.out)
    start = time.perf_counter()
    task = make_task(out)
    rows = [("start", score(Path(args.checkpoint), task))]
    sft_runs = train_sft(args.checkpoint, out, args.overrides)
    rows += [(run.name, score(run, task)) for run in sft_runs]
    best = max(rows[1:], key=lambda row: row[1]["new words: 3-way accuracy"])[0]
    dpo_runs = train_dpo(out / best, out, args.overrides)
    rows += [(f"{best} + {run.name}", score(run, task)) for run in dpo_runs]
    report = table(rows) + f"\n\n{(time.perf_counter() - start) / 60:.1f} min in all.\n"
    (out / "results.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
