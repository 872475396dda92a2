"""Generate images to a folder (PNG + index.json), label them with the classifier, list concepts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .errors import UserError
from .pipelines import MINICANVAS, SamplerConfig, load_pipeline, sample, to_uint8


def parse_seeds(text: str) -> list[int]:
    """'0,1,5' or '0-3' (inclusive) or a mix: '0-2,7'."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        span = re.fullmatch(r"(\d+)-(\d+)", part)
        try:
            seeds += list(range(int(span[1]), int(span[2]) + 1)) if span else ([int(part)] if part else [])
        except ValueError:
            raise UserError(f"bad seed {part!r} in {text!r}; give integers like 0,1,2 or a range 0-7") from None
    if not seeds:
        raise UserError(f"no seeds in {text!r}; give integers like 0,1,2 or a range 0-7")
    return seeds


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per non-empty line."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"prompt file {str(path)!r} not found")
    prompts = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"prompt file {str(path)!r} is empty; write one prompt per line")
    return prompts


def save_images(images: torch.Tensor, prompts: Sequence[str], seeds: Sequence[int], out: Path) -> list[dict]:
    """Write one PNG per image and out/index.json: a list of {file, prompt, seed}."""
    out.mkdir(parents=True, exist_ok=True)
    index = []
    for i, (img, prompt, seed) in enumerate(zip(to_uint8(images), prompts, seeds)):
        name = f"{i:05d}_seed{seed}.png"
        Image.fromarray(img).save(out / name)
        index.append({"file": name, "prompt": prompt, "seed": int(seed)})
    (out / "index.json").write_text(json.dumps(index, indent=1))
    return index


def generate_to_dir(pipe, prompts: Sequence[str], seeds: Sequence[int], config: SamplerConfig, out: Path, on_step=None) -> list[dict]:
    """Generate every prompt x seed and save it to `out`."""
    pairs = [(p, s) for p in prompts for s in seeds]
    images = sample(pipe, [p for p, _ in pairs], [s for _, s in pairs], config, on_step=on_step)
    return save_images(images, [p for p, _ in pairs], [s for _, s in pairs], out)


def load_images(folder: Path) -> tuple[list[str], torch.Tensor]:
    """Every PNG of a folder (sorted by name) as N x 3 x H x W floats in [0, 1]."""
    if not folder.is_dir():
        raise UserError(f"image folder {str(folder)!r} not found")
    files = sorted(f.name for f in folder.glob("*.png"))
    if not files:
        raise UserError(f"no PNG images in {str(folder)!r}")
    arrays = [np.asarray(Image.open(folder / f).convert("RGB"), dtype=np.float32) / 255 for f in files]
    shapes = {a.shape for a in arrays}
    if shapes != {(32, 32, 3)}:
        raise UserError(f"the minicanvas classifier takes 32x32 images; {str(folder)!r} has sizes {sorted(shapes)}")
    return files, torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def classify_dir(folder: Path) -> list[dict]:
    """Label every PNG in a folder: a list of {file, style, object, style_prob, object_prob}."""
    from .minicanvas.classifier import classify

    files, images = load_images(folder)
    return [{"file": f, **vars(label)} for f, label in zip(files, classify(images))]


# ---------------------------------------------------------------- CLI


def _cmd_concepts(args) -> None:
    from .minicanvas.world import OBJECTS, STYLE_NAMES

    if args.json:
        print(json.dumps({"styles": list(STYLE_NAMES), "objects": list(OBJECTS)}))
    else:
        print("styles: " + ", ".join(STYLE_NAMES))
        print("objects: " + ", ".join(OBJECTS))


def sampler_from_args(args) -> SamplerConfig:
    """The sampler settings given on the command line."""
    return SamplerConfig(steps=args.steps, cfg=args.cfg, batch_size=args.batch_size)


def add_sampler_args(p) -> None:
    """--model, --steps, --cfg, --batch-size."""
    d = SamplerConfig()
    p.add_argument("--model", default=MINICANVAS, help="minicanvas (default), a diffusers folder or a hub id")
    p.add_argument("--steps", type=int, default=d.steps, help=f"DDIM steps (default {d.steps})")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default: the model's; minicanvas stores its "
                   "own, Stable Diffusion 7.5)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)


def prompts_from_args(args) -> list[str]:
    """--prompt P (repeatable) or --prompts FILE."""
    if args.prompts:
        return read_prompts(args.prompts)
    if args.prompt:
        if any(not p.strip() for p in args.prompt):
            raise UserError("empty --prompt; give the text of a prompt")
        return list(args.prompt)
    raise UserError("give --prompt P or --prompts FILE")


def _cmd_generate(args) -> None:
    prompts = prompts_from_args(args)
    seeds = parse_seeds(args.seeds)
    pipe = load_pipeline(args.model)
    config = sampler_from_args(args)
    if args.ablate and not args.sae:
        raise UserError("--ablate needs --sae DIR (an SAE folder with concepts.h5 from `saeuron score`)")
    if args.sae:
        index = _generate_ablated(pipe, prompts, seeds, config, args)
    else:
        index = generate_to_dir(pipe, prompts, seeds, config, Path(args.out))
    print(f"wrote {len(index)} images and index.json to {args.out}")


def _generate_ablated(pipe, prompts, seeds, config, args) -> list[dict]:
    """Generate with SAeUron's ablation of the --ablate targets (each with its tuned values unless given)."""
    from .ablate import load_ablation_site, parse_targets

    site = load_ablation_site(args.sae, pipe, args.selection, args.firing)
    plan = site.plan(parse_targets(args.ablate or ""), multiplier=args.multiplier, percentile=args.percentile, dominance=args.dominance)
    pairs = [(p, s) for p in prompts for s in seeds]
    images = site.sample(pipe, plan, [p for p, _ in pairs], [s for _, s in pairs], config)
    return save_images(images, [p for p, _ in pairs], [s for _, s in pairs], Path(args.out))


def _cmd_classify(args) -> None:
    rows = classify_dir(Path(args.dir))
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        for r in rows:
            print(f"{r['file']}\t{r['style']} ({r['style_prob']:.2f})\t{r['object']} ({r['object_prob']:.2f})")


def register_cli(sub) -> None:
    """Add `concepts`, `generate` and `classify`."""
    from .ablate import add_rule_args
    from .cli import command_help

    p = sub.add_parser("concepts", help=command_help("concepts"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_concepts)

    p = sub.add_parser("generate", help=command_help("generate"))
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    g.add_argument("--prompts", help="a file with one prompt per line")
    p.add_argument("--seeds", default="0", help="seeds: 0,1,2 or 0-7")
    p.add_argument("--out", required=True, help="output folder")
    add_sampler_args(p)
    p.add_argument("--sae", help="SAE folder (with concepts.h5) for --ablate")
    p.add_argument("--ablate", help="concepts to erase: style:NAME[,object:NAME...]")
    p.add_argument("--multiplier", type=float, help="SAeUron's negative multiplier gamma (default: the tuned value of each target, else -1)")
    p.add_argument("--percentile", type=float, help="score percentile of selected features per step (default: the tuned value of each target, else 99.7)")
    p.add_argument("--dominance", type=float, help="keep only features each target fires at least this many times as strongly "
                                                   "as any other concept (default: the tuned value of each target, else 0: no filter)")
    add_rule_args(p)
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("classify", help=command_help("classify"))
    p.add_argument("dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_classify)
