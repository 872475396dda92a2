"""Quality of the shipped minicanvas model: classifier accuracy on its generations.

    python scripts/bench_minicanvas.py [--seeds 0-3] [--model DIR] [--steps N] [--cfg G] [--out benchmarks/minicanvas_grid.png]
    python scripts/bench_minicanvas.py --pick-cfg 1.5,2,3,4 --pick-seeds 10-11 --model DIR   # then benchmark

Generates every style x object with each seed at the default sampler settings, labels the
images with the shipped classifier and prints style / object accuracy (targets: >= 95 / >= 90).
With `--pick-cfg`, first chooses the model's default CFG scale: the candidate with the best
mean of style and object accuracy on `--pick-seeds` (disjoint from `--seeds`) is written to
the model folder's model_index.json (`default_guidance`), and the benchmark then uses it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from saeuron.evaluate import answer_set_grid, full_answer_set, generate_answer_set, label_accuracy  # noqa: E402
from saeuron.cli_args import parse_seeds  # noqa: E402
from saeuron.pipelines import MINICANVAS, SamplerConfig, load_pipeline, resolve_sampler  # noqa: E402


def accuracy(pipe, seeds: list[int], config: SamplerConfig, desc: str) -> tuple[dict, object, float]:
    """Generate the answer set of `seeds`: (classifier accuracies, images, seconds)."""
    answers = full_answer_set(seeds)
    bar = tqdm(total=len(answers.rows()), desc=desc)
    t0 = time.time()
    images = generate_answer_set(pipe, answers, config, on_batch=lambda start: bar.update(min(config.batch_size, len(answers.rows()) - start)))
    bar.close()
    return label_accuracy(images, answers), images, time.time() - t0


def pick_cfg(pipe, model_dir: Path, candidates: list[float], seeds: list[int], steps: int) -> dict:
    """Choose the default CFG scale on `seeds` and store it in `model_dir`/model_index.json."""
    tried = {}
    for g in candidates:
        acc, _, _ = accuracy(pipe, seeds, SamplerConfig(steps=steps, cfg=g), f"CFG {g} on seeds {seeds}")
        tried[g] = {"style": round(acc["style_accuracy"], 2), "object": round(acc["object_accuracy"], 2)}
    best = max(candidates, key=lambda g: (tried[g]["style"] + tried[g]["object"], -g))
    index_path = model_dir / "model_index.json"
    index = json.loads(index_path.read_text())
    index["default_guidance"] = best
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    pipe.register_to_config(default_guidance=best)
    return {"picked": best, "pick_seeds": seeds, "tried": tried}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0-3")
    p.add_argument("--model", default=MINICANVAS)
    p.add_argument("--out", type=Path, default=Path("benchmarks/minicanvas_grid.png"))
    p.add_argument("--steps", type=int, default=SamplerConfig.steps, help="DDIM steps (default: the sampler default)")
    p.add_argument("--cfg", type=float, default=None, help="CFG scale (default: the model's default_guidance)")
    p.add_argument("--pick-cfg", help="candidate CFG scales, e.g. 1.5,2,3,4: choose and store the model's default first")
    p.add_argument("--pick-seeds", default="10-11", help="seeds the CFG scale is chosen on (disjoint from --seeds)")
    args = p.parse_args()
    seeds = parse_seeds(args.seeds)
    pipe = load_pipeline(args.model)
    summary = {}
    if args.pick_cfg:
        pick_seeds = parse_seeds(args.pick_seeds)
        if set(pick_seeds) & set(seeds):
            raise SystemExit(f"--pick-seeds {args.pick_seeds} overlap --seeds {args.seeds}; they must be disjoint")
        if args.cfg is not None:
            raise SystemExit("give --cfg or --pick-cfg, not both")
        from saeuron.minicanvas.model import PIPELINE_DIR

        model_dir = PIPELINE_DIR if args.model == MINICANVAS else Path(args.model)
        summary["cfg_choice"] = pick_cfg(pipe, model_dir, [float(g) for g in args.pick_cfg.split(",")], pick_seeds, args.steps)
    config = resolve_sampler(pipe, SamplerConfig(steps=args.steps, cfg=args.cfg))
    acc, images, seconds = accuracy(pipe, seeds, config, "generating answer set")
    answer_set_grid(images, full_answer_set(seeds), args.out)
    summary.update({
        "images": len(images),
        "sampler": vars(config),
        "style_accuracy": round(acc["style_accuracy"], 2),
        "object_accuracy": round(acc["object_accuracy"], 2),
        "per_style": {k: round(v, 1) for k, v in acc["per_style"].items()},
        "per_object": {k: round(v, 1) for k, v in acc["per_object"].items()},
        "generation_seconds": round(seconds, 1),
        "grid": str(args.out),
    })
    print(json.dumps(summary, indent=1))
    ok = summary["style_accuracy"] >= 95 and summary["object_accuracy"] >= 90
    print("targets (style >= 95, object >= 90):", "met" if ok else "NOT met")


if __name__ == "__main__":
    main()
