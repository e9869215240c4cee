"""`llm-jax <command>`: parses arguments and calls the library; no logic of its own."""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Callable, Sequence

from llm_jax.errors import UserError

Handler = Callable[[argparse.Namespace], int | None]


def _import_hf(args: argparse.Namespace) -> None:
    from llm_jax.convert.hf_import import import_hf_checkpoint
    from llm_jax.infer.host_arrays import is_main_process

    out = import_hf_checkpoint(args.hf_dir, args.out)
    if is_main_process():
        print(f"imported {args.hf_dir} -> {out}")


def _export_hf(args: argparse.Namespace) -> None:
    from llm_jax.convert.hf_export import export_hf_checkpoint

    from llm_jax.infer.host_arrays import is_main_process

    lora = "merge" if args.merge_lora else "peft" if args.peft else ""
    out = export_hf_checkpoint(args.checkpoint, args.out, args.overrides, lora)
    if is_main_process():
        print(f"exported {args.checkpoint} -> {out}")


def _generate(args: argparse.Namespace) -> None:
    from llm_jax.infer.completion import complete
    from llm_jax.infer.host_arrays import is_main_process
    from llm_jax.infer.loading import load_model
    from llm_jax.infer.sampling import SamplingOptions

    options = SamplingOptions(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                              stop=tuple(args.stop))
    model = load_model(args.checkpoint, args.overrides)
    completions = complete(model.generator(), model.tokenizer, args.prompt, options,
                           chat=args.chat, system=args.system,
                           template=model.config.post.template)
    for prompt, completion in zip(args.prompt, completions if is_main_process() else []):
        if len(args.prompt) > 1:
            print(f"### {prompt}")
        print(completion.text.strip() if args.chat else prompt + completion.text)


def _eval(args: argparse.Namespace) -> None:
    import json

    from llm_jax.eval.tasks import EvalOptions, check_task, run_task
    from llm_jax.infer.host_arrays import is_main_process
    from llm_jax.infer.loading import load_model

    check_task(args.task)
    options = EvalOptions(
        data=tuple(args.data), limit=args.limit, batch_size=args.batch_size, window=args.window,
        stride=args.stride, text_field=args.text_field, tfds_data_dir=args.tfds_data_dir,
        num_fewshot=args.num_fewshot, fewshot_data=args.fewshot_data,
        max_new_tokens=args.max_new_tokens)
    results = {"task": args.task, "checkpoint": args.checkpoint,
               **run_task(args.task, load_model(args.checkpoint, args.overrides), options)}
    if not is_main_process():
        return
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        from llm_jax import storage

        storage.path(args.output).write_text(text + "\n")


def _launch(args: argparse.Namespace) -> int:
    from llm_jax.parallel.launch import launch

    command = args.command_line[1:] if args.command_line[:1] == ["--"] else args.command_line
    return launch(command, args.processes, args.devices_per_process)


def _train(args: argparse.Namespace) -> None:
    from llm_jax.config import load_config
    from llm_jax.train.loop import train
    from llm_jax.train.post_data import training_data

    config = load_config(args.config, args.overrides)
    data = training_data(config)  # the corpus for lm; records for sft, dpo, reward and ppo
    result = train(config, data, progress=not args.no_progress)
    summary = ", ".join(f"{k} {v:.4f}" for k, v in result.eval.items())
    print(f"{'stopped' if result.preempted else 'finished'} at step {result.step}: "
          f"loss {result.final_loss:.4f}" + (f", {summary}" if summary else "")
          + f"; checkpoints in {result.run_dir}")


def _quickstart(args: argparse.Namespace) -> None:
    from llm_jax.quickstart import run_quickstart

    run_quickstart(args.out, tuple(args.overrides))


def _plan(args: argparse.Namespace) -> None:
    from llm_jax.config import load_config
    from llm_jax.plan import plan

    print(plan(load_config(args.config, args.overrides), args.slice, not args.no_compile,
               args.num_slices))


def _curate(args: argparse.Namespace) -> None:
    from llm_jax.config import load_config
    from llm_jax.data.curate import curate, format_report
    from llm_jax.data.mixture import member_configs
    from llm_jax.parallel.agreement import check_processes_agree
    from llm_jax.parallel.one_process import on_process_zero

    config = load_config(args.config, args.overrides)
    check_processes_agree(config)
    for member in member_configs(config) if config.data.mixture else [config]:
        report = on_process_zero(lambda: curate(member, progress=not args.no_progress,
                                                force=args.force))
        if report.get("submitted"):
            print(f"submitted the {report['submitted']} stages as Slurm jobs (logs: "
                  f"{report['logs']}); when they have finished, run this command again to "
                  "write the corpus metadata and report.json")
            continue
        print(format_report(report))
        print(f"{report['documents_out']:,} of {report['documents_in']:,} documents kept in "
              f"{report['seconds']} s -> {report['corpus']} (report.json, rejected/)")


def _tokenizer(args: argparse.Namespace) -> None:
    from llm_jax.config import load_config
    from llm_jax.data.mixture import member_configs
    from llm_jax.data.tokenizer import SentencePieceTokenizer
    from llm_jax.data.tokenizer_training import train_from_config
    from llm_jax.parallel.agreement import check_processes_agree
    from llm_jax.parallel.one_process import on_process_zero

    config = load_config(args.config, args.overrides)
    check_processes_agree(config)
    info = on_process_zero(lambda: train_from_config(config, force=args.force,
                                                     progress=not args.no_progress))
    state = "already trained on this corpus" if info.get("skipped") else f"trained in {info['seconds']} s"
    print(f"tokenizer {info['model']}: {info['vocab_size']} tokens, {state}")
    print(f"  hugging face: {info['hf_dir'] or 'not exported (pip install llm_jax[hf])'}")
    if args.pretokenize:
        from llm_jax.data.pretokenize import pretokenize

        tokenizer = SentencePieceTokenizer.load(info["model"])
        for member in member_configs(config) if config.data.mixture else [config]:
            meta = on_process_zero(lambda: pretokenize(member, tokenizer,
                                                       progress=not args.no_progress))
            print(f"  pre-tokenized {member.data.source}: {meta['documents']:,} documents, "
                  f"{meta['tokens']:,} tokens")


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="tiny", help="preset name in configs/ or a YAML path")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")


def _add_mesh_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="mesh.KEY=VALUE",
                        help="where the parameters are sharded, e.g. mesh.fsdp=4 mesh.tensor=2 "
                        "(default: fsdp over all devices)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-jax", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="<command>")

    p = commands.add_parser("import-hf", help="import a Hugging Face Llama directory")
    p.add_argument("--hf-dir", required=True, help="directory with config.json and safetensors")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.set_defaults(handler=_import_hf)

    p = commands.add_parser("export-hf", help="export a checkpoint as a Hugging Face Llama")
    p.add_argument("--checkpoint", required=True, help="checkpoint or run directory")
    p.add_argument("--out", required=True, help="directory to write (config.json, safetensors)")
    lora = p.add_mutually_exclusive_group()
    lora.add_argument("--merge-lora", action="store_true",
                      help="a LoRA run: fold the adapters into the weights, one plain model")
    lora.add_argument("--peft", action="store_true",
                      help="a LoRA run: write its adapters alone, as a PEFT adapter directory")
    _add_mesh_args(p)
    p.set_defaults(handler=_export_hf)

    p = commands.add_parser("generate", help="continue prompts (or chat) with a checkpoint")
    p.add_argument("--checkpoint", required=True, help="checkpoint or run directory")
    p.add_argument("--prompt", required=True, action="append",
                   help="text to continue; repeat for a batch of prompts")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 keeps every token")
    p.add_argument("--top-p", type=float, default=1.0, help="1 keeps every token")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--chat", action="store_true",
                   help="treat each prompt as a user message framed by the chat template the "
                        "checkpoint was tuned with (its post.template)")
    p.add_argument("--system", default=None, help="system message in --chat mode")
    _add_mesh_args(p)
    p.set_defaults(handler=_generate)

    p = commands.add_parser("eval", help="perplexity, multiple choice or GSM8K of a checkpoint")
    p.add_argument("--checkpoint", required=True, help="checkpoint or run directory")
    p.add_argument("--task", default="perplexity",
                   help="perplexity | multiple_choice | gsm8k")
    p.add_argument("--data", action="append", default=[],
                   help="text files or glob, jsonl:PATH, tfds:NAME[:SPLIT] (repeatable)")
    p.add_argument("--limit", type=int, default=None, help="documents or examples per source")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--window", type=int, default=None,
                   help="perplexity window in tokens (default: model.max_seq_len)")
    p.add_argument("--stride", type=int, default=None,
                   help="tokens newly scored per window (default: the window)")
    p.add_argument("--text-field", default="text", help="JSONL or TFDS field with the text")
    p.add_argument("--tfds-data-dir", default=None)
    p.add_argument("--num-fewshot", type=int, default=0)
    p.add_argument("--fewshot-data", default=None, help="gsm8k: JSONL of worked examples")
    p.add_argument("--max-new-tokens", type=int, default=256, help="gsm8k: per answer")
    p.add_argument("--output", default=None, help="also write the results JSON here")
    _add_mesh_args(p)
    p.set_defaults(handler=_eval)

    p = commands.add_parser("train", help="train (or resume) a run; objective from the config")
    _add_config_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_train)

    p = commands.add_parser("curate", help="filter, deduplicate and scrub data.source into a corpus")
    _add_config_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true",
                   help="replace data.curated_dir even if it holds other files or a corpus "
                   "curated with other settings")
    p.set_defaults(handler=_curate)

    p = commands.add_parser("tokenizer", help="train the SentencePiece BPE tokenizer on the corpus")
    _add_config_args(p)
    p.add_argument("--force", action="store_true", help="retrain even if up to date")
    p.add_argument("--pretokenize", action="store_true",
                   help="also write the corpus as token ids (data.pretokenized=true reads them)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_tokenizer)

    p = commands.add_parser("launch", help="run a command as N local processes, each one "
                            "simulated host with its own CPU devices (try pod runs locally)")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--devices-per-process", type=int, default=4)
    p.add_argument("command_line", nargs=argparse.REMAINDER,
                   help="-- then the llm-jax command, e.g. -- train --config tiny")
    p.set_defaults(handler=_launch)

    p = commands.add_parser("quickstart", help="curate, tokenize, pretrain, evaluate and sample "
                            "a tiny Llama on the built-in corpus (CPU, under 15 minutes)")
    p.add_argument("--out", default="runs/quickstart", help="run directory")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of the quickstart preset")
    p.set_defaults(handler=_quickstart)

    p = commands.add_parser("plan", help="memory and FLOPs per device for a config and slice")
    _add_config_args(p)
    p.add_argument("--slice", default="", help="target, e.g. v5p-128, v5e-256, h100-8 "
                   "(default: this process's devices)")
    p.add_argument("--num-slices", type=int, default=1,
                   help="TPU slices joined over the data-center network (multislice)")
    p.add_argument("--no-compile", action="store_true", help="skip the ahead-of-time compile")
    p.set_defaults(handler=_plan)

    return parser


def _which_process() -> str:
    """"process i of n: " on a multi-process run, else nothing."""
    from llm_jax.parallel.distributed import process_label

    label = process_label()
    return f"{label}: " if label else ""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command != "launch":  # before anything touches a device
            from llm_jax.parallel.distributed import initialize_distributed

            initialize_distributed()
        return args.handler(args) or 0
    except UserError as err:
        print(f"llm-jax {args.command}: error: {_which_process()}{err}", file=sys.stderr)
        return 2
    except Exception as err:  # on a pod, say which host's log holds the traceback
        if not _which_process():
            raise
        traceback.print_exc()
        print(f"llm-jax {args.command}: error: {_which_process()}{type(err).__name__}: {err}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"llm-jax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
