"""Quality of the shipped minicanvas model: classifier accuracy on its generations.

    python scripts/bench_minicanvas.py [--seeds 0-3] [--model DIR] [--steps N] [--cfg G] [--out benchmarks/minicanvas_grid.png]

Generates every style x object with each seed at the default sampler settings, labels the
images with the shipped classifier and prints style / object accuracy (targets: >= 95 / >= 90).
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
from saeuron.generate import parse_seeds  # noqa: E402
from saeuron.pipelines import SamplerConfig, load_pipeline  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0-3")
    p.add_argument("--model", default="minicanvas")
    p.add_argument("--out", type=Path, default=Path("benchmarks/minicanvas_grid.png"))
    p.add_argument("--steps", type=int, default=SamplerConfig.steps, help="DDIM steps (default: the sampler default)")
    p.add_argument("--cfg", type=float, default=SamplerConfig.cfg, help="CFG scale (default: the sampler default)")
    args = p.parse_args()
    pipe = load_pipeline(args.model)
    config = SamplerConfig(steps=args.steps, cfg=args.cfg)
    answers = full_answer_set(parse_seeds(args.seeds))
    bar = tqdm(total=len(answers.rows()), desc="generating answer set")
    t0 = time.time()
    images = generate_answer_set(pipe, answers, config, on_batch=lambda start: bar.update(min(config.batch_size, len(answers.rows()) - start)))
    bar.close()
    seconds = time.time() - t0
    acc = label_accuracy(images, answers)
    answer_set_grid(images, answers, args.out)
    summary = {
        "images": len(images),
        "sampler": vars(config),
        "style_accuracy": round(acc["style_accuracy"], 2),
        "object_accuracy": round(acc["object_accuracy"], 2),
        "per_style": {k: round(v, 1) for k, v in acc["per_style"].items()},
        "per_object": {k: round(v, 1) for k, v in acc["per_object"].items()},
        "generation_seconds": round(seconds, 1),
        "grid": str(args.out),
    }
    print(json.dumps(summary, indent=1))
    ok = summary["style_accuracy"] >= 95 and summary["object_accuracy"] >= 90
    print("targets (style >= 95, object >= 90):", "met" if ok else "NOT met")


if __name__ == "__main__":
    main()
