"""The `saeuron` command line: one subcommand per stage, each reading and writing files.

Each stage module exposes `register_cli(subparsers)`, which adds its subcommands and sets
`func` on them; a `UserError` is printed as one line and exits with status 2. Only the
module of the command being run is imported (the stages import torch, diffusers, sae-lens),
so `saeuron --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import UserError

# subcommand -> (stage module that registers it, one-line help), in the order of --help
COMMANDS = {
    "concepts": ("saeuron.generate", "list the concept kinds and values of minicanvas, a labelled prompt file or a store"),
    "generate": ("saeuron.generate", "generate one PNG per prompt x seed, with index.json"),
    "classify": ("saeuron.generate", "label every PNG of a folder with the shipped style/object classifier"),
    "hookpoints": ("saeuron.hooks", "list the UNet's hookpoints (cross-attention blocks; --all: every module) with their shapes"),
    "cache": ("saeuron.cache", "sample prompts x seeds and store hookpoint activations in an HDF5 store (resumable)"),
    "train": ("saeuron.train", "train an SAE on one hookpoint of an activation cache (sae-lens)"),
    "supervise": ("saeuron.supervise", "fine-tune an SAE with concept labels so each concept owns one latent (SAEmnesia)"),
    "score": ("saeuron.concepts", "per-timestep concept scores of every SAE feature (SAeUron)"),
    "unlearn": ("saeuron.unlearn", "erase concepts with any method (saeuron, esd-x, esd-u, uce, ca, spm, unguide, sa) into an unlearned-model folder"),
    "evaluate": ("saeuron.evaluate", "UnlearnCanvas metrics (UA / IRA / CRA) of SAeUron ablation or of an unlearned-model folder"),
    "attack": ("saeuron.attack", "white-box attacks (unlearndiffatk, inversion) on an unlearned-model folder: UA before and after"),
    "demo": ("saeuron.demo", "run the end-to-end SAeUron demo on the shipped minicanvas model"),
    "app": ("saeuron.app", "open the Streamlit explorer (features, concepts, ablation) on a run directory"),
}


def command_help(name: str) -> str:
    """The one-line help of a subcommand (stage modules use it in `register_cli`)."""
    return COMMANDS[name][1]


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line, `saeuron CMD: error: ...`, with exit status 2 (no usage dump)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser: the full subcommand of `command` (importing its stage), the others as names only."""
    parser = OneLineParser(prog="saeuron", description="SAEs for interpretability and concept unlearning in diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if command in COMMANDS:
        importlib.import_module(COMMANDS[command][0]).register_cli(sub)
    else:
        for name, (_, text) in COMMANDS.items():
            sub.add_parser(name, help=text)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        args = build_parser(command).parse_args(argv)
    except SystemExit as done:  # --help (0) or a bad option (2, one line already printed)
        return int(done.code or 0)
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
