"""Command-line options that several stages share: seeds, prompts, sampler, device and precision.

Needs only `pipelines`, `concept_set`, `devices` and `errors`, so every stage can import it.
"""

from __future__ import annotations

import re

from .concept_set import ConceptSet
from .devices import DEVICE_FORMS, DTYPES, resolve_device, resolve_dtype
from .errors import UserError
from .pipelines import MINICANVAS, SamplerConfig

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit seed


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
    p.add_argument("--steps", type=int, default=d.steps, help=f"DDIM steps (default {d.steps})")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default: the model's; minicanvas stores its "
                   "own, Stable Diffusion 7.5)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
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
