"""`llm-jax <command>`: parses arguments and calls the library; no logic of its own."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from llm_jax.errors import UserError

Handler = Callable[[argparse.Namespace], int | None]


def _import_hf(args: argparse.Namespace) -> None:
    from llm_jax.convert.hf_import import import_hf_checkpoint

    out = import_hf_checkpoint(args.hf_dir, args.out)
    print(f"imported {args.hf_dir} -> {out}")


def _export_hf(args: argparse.Namespace) -> None:
    from llm_jax.convert.hf_export import export_hf_checkpoint

    out = export_hf_checkpoint(args.checkpoint, args.out)
    print(f"exported {args.checkpoint} -> {out}")


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="tiny", help="preset name in configs/ or a YAML path")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")


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
    p.set_defaults(handler=_export_hf)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except UserError as err:
        print(f"llm-jax {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"llm-jax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
