"""Generate images to a folder (PNG + index.json), label them with the classifier, list concepts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .cli_args import check_output, DOMINANCE, MULTIPLIER, PERCENTILE, START, PROMPTS_HELP, add_sampler_args, concept_set_from_args, device_from_args, parse_seeds, sampler_from_args
from .concept_set import parse_concepts
from .errors import UserError
from .pipelines import SamplerConfig, load_pipeline, sample, to_uint8


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


def generate_to_dir(pipe, prompts: Sequence[str], seeds: Sequence[int], config: SamplerConfig, out: Path, on_step=None,
                    draw=None) -> list[dict]:
    """Generate every prompt x seed and save it to `out`; `draw(prompts, seeds)` replaces plain sampling (ablation, an
    unlearned model)."""
    pairs = [(p, s) for p in prompts for s in seeds]
    draw = draw or (lambda ps, ss: sample(pipe, ps, ss, config, on_step=on_step))
    images = draw([p for p, _ in pairs], [s for _, s in pairs])
    return save_images(images, [p for p, _ in pairs], [s for _, s in pairs], out)


def _read_rgb(path: Path) -> np.ndarray:
    """One image file as H x W x 3 floats in [0, 1], or one clear error naming it."""
    from PIL import UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.float32) / 255
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserError(f"{str(path)!r} is not a readable image ({type(err).__name__})") from None


def load_images(folder: Path) -> tuple[list[str], torch.Tensor]:
    """Every PNG of a folder (sorted by name) as N x 3 x H x W floats in [0, 1]."""
    if folder.is_file():
        raise UserError(f"{str(folder)!r} is a file; give the folder of PNG images to classify")
    if not folder.is_dir():
        raise UserError(f"image folder {str(folder)!r} not found")
    files = sorted(f.name for f in folder.glob("*.png"))
    if not files:
        raise UserError(f"no PNG images in {str(folder)!r}")
    arrays = [_read_rgb(folder / f) for f in files]
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


def concept_set_of(args):
    """The concept set `saeuron concepts` lists: a store's (--store), a prompt file's (--prompts), else minicanvas's."""
    from .concept_set import ConceptSet

    if args.store:
        from .cache import open_store

        return open_store(args.store).concept_set
    return ConceptSet.from_file(args.prompts) if args.prompts else ConceptSet.minicanvas()


def _cmd_concepts(args) -> None:
    cs = concept_set_of(args)
    table = {kind: cs.values(kind) for kind in cs.kinds}
    if args.json:
        print(json.dumps({"source": cs.name, "kinds": table, "concepts": cs.concepts(),
                          "prompts_per_concept": {c: sum(c in cs.labels(r) for r in cs.rows) for c in cs.concepts()}}))
        return
    print(f"{cs.name}: {len(cs.rows)} prompts, {len(cs.concepts())} concepts")
    for kind, values in table.items():
        print(f"{kind} ({len(values)}): " + ", ".join(values))
    if not table:
        print("(no labels: every prompt is unlabelled)")


def _cmd_generate(args) -> None:
    prompts = concept_set_from_args(args).prompts
    seeds = parse_seeds(args.seeds)
    config = sampler_from_args(args)
    device, dtype = device_from_args(args)
    if args.ablate and not args.sae:
        raise UserError("--ablate needs --sae DIR (an SAE folder with concepts.h5 from `saeuron score`)")
    if args.unlearned and args.sae:
        raise UserError("give --sae (SAeUron's ablation) or --unlearned (a folder from `saeuron unlearn`), not both")
    unlearned = None
    if args.unlearned:
        from .unlearn import load_unlearned

        unlearned = load_unlearned(args.unlearned)
    targets = parse_concepts(args.ablate) if args.ablate else []
    out = check_output(args.out, "output folder", folder=True)
    if (out / "index.json").exists():
        raise UserError(f"output folder {str(out)!r} already holds generated images (index.json); choose another --out")
    pipe = load_pipeline(args.model, dtype, device)
    if unlearned is not None:
        unlearned = load_unlearned(args.unlearned, pipe)  # now also checked against the base model
        index = generate_to_dir(pipe, prompts, seeds, config, Path(args.out), draw=lambda ps, ss: unlearned.generate(pipe, ps, ss, config))
    elif args.sae:
        index = _generate_ablated(pipe, prompts, seeds, config, targets, args)
    else:
        index = generate_to_dir(pipe, prompts, seeds, config, Path(args.out))
    print(f"wrote {len(index)} images and index.json to {args.out}")


def _generate_ablated(pipe, prompts, seeds, config, targets, args) -> list[dict]:
    """Generate with SAeUron's ablation of the --ablate targets (each with its tuned values unless given)."""
    from .ablate import load_ablation_site

    site = load_ablation_site(args.sae, pipe, args.selection, args.firing)
    plan = site.plan(targets, multiplier=args.multiplier, percentile=args.percentile, dominance=args.dominance, start=args.start)
    return generate_to_dir(pipe, prompts, seeds, config, Path(args.out), draw=lambda ps, ss: site.sample(pipe, plan, ps, ss, config))


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
    g = p.add_mutually_exclusive_group()
    g.add_argument("--store", help="list the concepts of an activation store (.h5 or sharded folder)")
    g.add_argument("--prompts", help="list the concepts of a labelled prompt file (.csv / .jsonl)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_concepts)

    p = sub.add_parser("generate", help=command_help("generate"))
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    g.add_argument("--prompts", help=PROMPTS_HELP)
    p.add_argument("--seeds", default="0", help="seeds: 0,1,2 or 0-7")
    p.add_argument("--out", required=True, help="output folder")
    add_sampler_args(p)
    p.add_argument("--unlearned", help="generate as an unlearned model: a folder written by `saeuron unlearn` (any method)")
    p.add_argument("--sae", help="SAE folder (with concepts.h5) for --ablate")
    p.add_argument("--ablate", help="concepts to erase, KIND:VALUE[,KIND:VALUE...] (any concept of the SAE's scores, e.g. style:neon,object:star)")
    p.add_argument("--multiplier", type=MULTIPLIER, help="SAeUron's negative multiplier gamma (default: the tuned value of each target, else -1)")
    p.add_argument("--percentile", type=PERCENTILE, help="score percentile of selected features per step (default: the tuned value of each target, else 99.7)")
    p.add_argument("--dominance", type=DOMINANCE, help="keep only features each target fires at least this many times as strongly "
                                                   "as any other concept (default: the tuned value of each target, else 0: no filter)")
    p.add_argument("--start", type=START, help="fraction of the denoising steps left unablated at the start (default: the tuned "
                                               "value of each target, else 0: every step, as SAeUron)")
    add_rule_args(p)
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("classify", help=command_help("classify"))
    p.add_argument("dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_classify)
