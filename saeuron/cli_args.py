"""Command-line options that several stages share: seeds, prompts, sampler, device and precision.

Needs only `pipelines`, `concept_set`, `devices` and `errors`, so every stage can import it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

from .concept_set import ConceptSet
from .devices import DEVICE_FORMS, DTYPES, resolve_device, resolve_dtype
from .errors import UserError
from .pipelines import MINICANVAS, SamplerConfig

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit seed


def bounded(kind: type, lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False):
    """An argparse type: an int or a finite float within [lo, hi] (open ends where asked), else one clear error."""
    import argparse
    import math

    def convert(text: str):
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        low_ok = lo is None or (value > lo if lo_open else value >= lo)
        high_ok = hi is None or (value < hi if hi_open else value <= hi)
        if not (low_ok and high_ok):
            show = (lambda v: str(int(v))) if kind is int else (lambda v: f"{v:g}")
            left = "" if lo is None else f"{'>' if lo_open else '>='} {show(lo)}"
            right = "" if hi is None else f"{'<' if hi_open else '<='} {show(hi)}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: it must be {' and '.join(x for x in (left, right) if x)}")
        return value

    convert.__name__ = kind.__name__  # argparse names the type in its messages
    return convert


POSITIVE_INT = bounded(int, 1, 2**31 - 1)
SEED = bounded(int, 0, MAX_SEED)
GUIDANCE = bounded(float, 0, 100)
MULTIPLIER = bounded(float, hi=0, hi_open=True)
PERCENTILE = bounded(float, 0, 100, lo_open=True, hi_open=True)
DOMINANCE = bounded(float, 0)
START = bounded(float, 0, 1, hi_open=True)  # fraction of the denoising steps left unablated at the start


def parse_seeds(text: str) -> list[int]:
    """'0,1,5' or '0-3' (inclusive) or a mix: '0-2,7'."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        span = re.fullmatch(r"(\d+)-(\d+)", part)
        try:
            seeds += list(range(int(span[1]), int(span[2]) + 1)) if span else ([int(part)] if part else [])
        except ValueError:
            raise UserError(f"bad seed {part!r} in {text!r}; give integers like 0,1,2 or a range 0-7") from None
    if not seeds:
        raise UserError(f"no seeds in {text!r}; give integers like 0,1,2 or a range 0-7")
    bad = [s for s in seeds if not 0 <= s <= MAX_SEED]
    if bad:
        raise UserError(f"seed {bad[0]} in {text!r} is out of range; seeds are integers in 0..{MAX_SEED}")
    return seeds


def add_sampler_args(p) -> None:
    """--model, --steps, --cfg, --batch-size, --device, --dtype."""
    d = SamplerConfig()
    p.add_argument("--model", default=MINICANVAS, help="minicanvas (default), a diffusers folder or a hub id")
    p.add_argument("--steps", type=bounded(int, 1, 1000), default=d.steps, help=f"DDIM steps (default {d.steps})")
    p.add_argument("--cfg", type=GUIDANCE, default=None, help="classifier-free guidance scale (default: the model's; minicanvas stores its "
                   "own, Stable Diffusion 7.5)")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=d.batch_size)
    add_device_args(p)


def add_device_args(p) -> None:
    """--device and --dtype."""
    p.add_argument("--device", default="auto", help=f"where models run: {DEVICE_FORMS} (default auto: CUDA when present, else the CPU)")
    p.add_argument("--dtype", default="float32", help=f"precision of the models: {', '.join(DTYPES)} (default float32; stores stay float16 on disk)")


def device_from_args(args):
    """(torch device, torch dtype) of --device / --dtype, checked."""
    return resolve_device(getattr(args, "device", "auto")), resolve_dtype(getattr(args, "dtype", "float32"))


def sampler_from_args(args) -> SamplerConfig:
    """The sampler settings given on the command line."""
    return SamplerConfig(steps=args.steps, cfg=args.cfg, batch_size=args.batch_size)


def concept_set_from_args(args) -> ConceptSet:
    """--prompt P (repeatable, unlabelled), --prompts FILE (.txt, .csv, .jsonl) or --minicanvas."""
    if getattr(args, "minicanvas", False):
        return ConceptSet.minicanvas()
    if getattr(args, "prompts", None):
        return ConceptSet.from_file(args.prompts)
    if getattr(args, "prompt", None):
        if any(not p.strip() for p in args.prompt):
            raise UserError("empty --prompt; give the text of a prompt")
        return ConceptSet.from_rows(list(args.prompt), "--prompt")
    raise UserError("give --prompt P or --prompts FILE")


PROMPTS_HELP = ("a prompt file: .txt (one prompt per line), or .csv / .jsonl with a 'prompt' column and one column per "
                "concept kind (e.g. artist, object), each non-empty value a concept")


def check_output(path: str | Path, what: str, folder: bool = False, may_replace: Callable[[Path], bool] | None = None) -> Path:
    """Refuse, before any work, an output that cannot be written or would clobber something.

    `folder`: the output is a folder (an existing one is fine); else a file, which may replace an
    existing file only where `may_replace(path)` says it is one of ours (a previous result)."""
    p = Path(path)
    if p.exists():
        if folder and not p.is_dir():
            raise UserError(f"{what} {str(p)!r} is a file; give a folder")
        if not folder:
            if p.is_dir():
                raise UserError(f"{what} {str(p)!r} is a folder; give a file path")
            if may_replace is None or not may_replace(p):
                raise UserError(f"{what} {str(p)!r} already exists and is not a saeuron output of this kind; choose another path")
    anchor = p if p.is_dir() else p.parent
    while not anchor.exists():
        anchor = anchor.parent
    if not anchor.is_dir():
        raise UserError(f"cannot write {what} {str(p)!r}: {str(anchor)!r} is a file, not a folder")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {what} {str(p)!r}: {str(anchor)!r} is not writable")
    return p


def is_json_with(*keys: str) -> Callable[[Path], bool]:
    """A `may_replace` test: the file is JSON holding these keys (a previous saeuron result)."""
    import json

    def test(path: Path) -> bool:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            return False
        return isinstance(data, dict) and all(k in data for k in keys)

    return test
