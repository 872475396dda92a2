"""`saeuron demo`: the end-to-end job on the shipped model, laid out as a run directory.

For now (foundation): generate every style x object, label it with the classifier, and write
`report/grid.png` and `report/base.json`. Later stages (cache, train, score, unlearn,
evaluate) extend this run.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from .evaluate import answer_set_grid, full_answer_set, generate_answer_set, label_accuracy
from .generate import parse_seeds
from .pipelines import SamplerConfig, load_pipeline


def run_demo(out: Path, seeds: list[int]) -> dict:
    """Generate, label and report the base model's answer set into the run directory `out`."""
    pipe = load_pipeline()
    config = SamplerConfig()
    answers = full_answer_set(seeds)
    n = len(answers.rows())
    bar = tqdm(total=n, desc="demo: generating every style x object")
    images = generate_answer_set(pipe, answers, config, on_batch=lambda start: bar.update(min(config.batch_size, n - start)))
    bar.close()
    acc = label_accuracy(images, answers)
    report = out / "report"
    grid = answer_set_grid(images, answers, report / "grid.png")
    base = {"style_accuracy": acc["style_accuracy"], "object_accuracy": acc["object_accuracy"],
            "per_style": acc["per_style"], "per_object": acc["per_object"], "seeds": seeds, "sampler": vars(config)}
    (report / "base.json").write_text(json.dumps(base, indent=1))
    return {"grid": str(grid), "style_accuracy": base["style_accuracy"], "object_accuracy": base["object_accuracy"]}


def _cmd_demo(args) -> None:
    summary = run_demo(Path(args.out), parse_seeds(args.seeds))
    print(f"style accuracy {summary['style_accuracy']:.1f}%  object accuracy {summary['object_accuracy']:.1f}%")
    print(f"grid of every style x object: {summary['grid']}")


def register_cli(sub) -> None:
    """Add `demo`."""
    p = sub.add_parser("demo", help="run the end-to-end demo on the shipped minicanvas model")
    p.add_argument("--out", default="activations/demo", help="run directory (default activations/demo)")
    p.add_argument("--seeds", default="0", help="seeds of the answer set (default 0)")
    p.set_defaults(func=_cmd_demo)
