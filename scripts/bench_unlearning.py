"""SAeUron unlearning on minicanvas over every style and every object (UnlearnCanvas metrics).

    python scripts/bench_unlearning.py [--run activations/bench] [--cache-seeds 0-1] [--tune-seeds 100] [--eval-seeds 200-201]

Builds (or reuses) a run directory like `saeuron demo` with more cache seeds, then evaluates
every style (on the style hookpoint), three styles together, and every object (on the object
hookpoint), and the ablated / plain generation time ratio. As in SAeUron, styles use one fixed
setting (multiplier -1, percentile 99.7: ~3 of 1024 features a step) unless --tune-styles is
given, and each object's (percentile, multiplier) is tuned on the tuning seeds. Every part
resumes where it stopped; --parts runs a subset. Targets: styles UA >= 95, IRA >= 90, CRA >= 90;
objects UA >= 90, IRA >= 85, CRA >= 90; three styles together UA >= 90, IRA >= 85; time <= 1.3.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from saeuron.ablate import FIRING_RULES, SELECTIONS, load_ablation_site  # noqa: E402
from saeuron.demo import OBJECT_HOOKPOINT, STYLE_HOOKPOINT, DemoConfig, build_run  # noqa: E402
from saeuron.evaluate import full_answer_set, generate_answer_set, markdown_report, parse_target_spec, run_evaluation  # noqa: E402
from saeuron.generate import parse_seeds  # noqa: E402
from saeuron.pipelines import SamplerConfig, load_pipeline, resolve_sampler, sample  # noqa: E402


PARTS = {  # name -> (hookpoint, targets, erased together)
    "styles": (STYLE_HOOKPOINT, parse_target_spec("all-styles"), False),
    "three_styles_together": (STYLE_HOOKPOINT, ["style:neon", "style:ocean", "style:lava"], True),
    "objects": (OBJECT_HOOKPOINT, parse_target_spec("all-objects"), False),
}


def time_ratio(pipe, run: Path, sampler: SamplerConfig, repeats: int = 2) -> float:
    """Ablated generation time / plain generation time for the same 50 prompts, best of `repeats`, interleaved."""
    site = load_ablation_site(run / "saes" / STYLE_HOOKPOINT, pipe)
    plan = site.plan(["style:neon"], multiplier=-1.0, percentile=99.7)
    prompts, seeds = ["a star in neon style"] * 50, list(range(50))
    sample(pipe, prompts[:1], seeds[:1], SamplerConfig(steps=1))  # warm-up
    plain, ablated = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sample(pipe, prompts, seeds, sampler)
        plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        site.sample(pipe, plan, prompts, seeds, sampler)
        ablated.append(time.perf_counter() - t0)
    return min(ablated) / min(plain)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=Path("activations/bench"))
    p.add_argument("--cache-seeds", default="0-1")
    p.add_argument("--eval-seeds", default="200-201", help="evaluation seeds, disjoint from the cache and tuning seeds")
    p.add_argument("--tune-seeds", default="100")
    p.add_argument("--time-only", action="store_true", help="only the ablated / plain time ratio, on the existing --run")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)} (default: all)")
    p.add_argument("--tune-styles", action="store_true", help="tune styles per target too (SAeUron fixes them)")
    p.add_argument("--selection", default="saeuron", choices=SELECTIONS, help="feature selection rule (see `saeuron evaluate --help`)")
    p.add_argument("--firing", default="mean", choices=FIRING_RULES, help="firing threshold rule (see `saeuron evaluate --help`)")
    args = p.parse_args()
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = [x for x in parts if x not in PARTS]
    if unknown or not parts:
        raise SystemExit(f"unknown --parts {unknown or args.parts!r}; valid: {', '.join(PARTS)}")
    overlap = set(parse_seeds(args.eval_seeds)) & (set(parse_seeds(args.cache_seeds)) | set(parse_seeds(args.tune_seeds)))
    if overlap:
        raise SystemExit(f"evaluation seeds {sorted(overlap)} are also cache or tuning seeds; they must be disjoint")
    pipe = load_pipeline()
    sampler = resolve_sampler(pipe, SamplerConfig())
    if args.time_only:
        print(json.dumps({"ablated/plain generation time": round(time_ratio(pipe, args.run, sampler), 3)}))
        return
    build_run(args.run, DemoConfig(cache_seeds=tuple(parse_seeds(args.cache_seeds)), eval_seeds=tuple(parse_seeds(args.eval_seeds))), pipe)
    eval_seeds, tune_seeds = parse_seeds(args.eval_seeds), parse_seeds(args.tune_seeds)
    base_images = generate_answer_set(pipe, full_answer_set(eval_seeds), sampler)  # shared by every part
    summary = {}
    for name in parts:
        hookpoint, targets, together = PARTS[name]
        tune = tune_seeds if hookpoint == OBJECT_HOOKPOINT or args.tune_styles else None
        label = "_".join([name] + [rule for rule, default in ((args.selection, "saeuron"), (args.firing, "mean")) if rule != default])
        res = run_evaluation(args.run / "saes" / hookpoint, targets, eval_seeds, tune, sampler, together,
                             args.run / "eval" / f"bench_{label}.json", args.run / "report" / label, pipe=pipe,
                             base_images=base_images, selection=args.selection, firing=args.firing)
        print(f"## {name}\n\n{markdown_report(res)}")
        summary[name] = res["mean"]
    summary["ablated/plain generation time"] = round(time_ratio(pipe, args.run, sampler), 3)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
