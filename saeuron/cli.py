"""The `saeuron` command line: one subcommand per stage, each reading and writing files.

Each stage module exposes `register_cli(subparsers)`, which adds its subcommands and sets
`func` on them; a `UserError` is printed as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import UserError

# stage modules that contribute subcommands, in the order they appear in --help
STAGE_MODULES = ("saeuron.generate", "saeuron.hooks", "saeuron.cache", "saeuron.train", "saeuron.concepts", "saeuron.evaluate", "saeuron.demo", "saeuron.app")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every stage's subcommands."""
    parser = argparse.ArgumentParser(prog="saeuron", description="SAEs for interpretability and concept unlearning in diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in STAGE_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # a stage not written yet
                continue
            raise
        module.register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"saeuron {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"saeuron {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
