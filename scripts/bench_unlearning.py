"""SAeUron unlearning on minicanvas over every style and every object (UnlearnCanvas metrics).

    python scripts/bench_unlearning.py [--run activations/bench] [--cache-seeds 0-1] [--tune-seeds 100] [--eval-seeds 200-201]
        [--parts styles,three_styles_together,objects] [--style-tuning none|dominance|full] [--tune-dominances 0,2,3]

Builds (or reuses) a run directory like `saeuron demo` with more cache seeds, then evaluates
every style (on the style hookpoint), three styles together, and every object (on the object
hookpoint), and the ablated / plain generation time ratio. As in SAeUron, styles use one fixed
setting (multiplier -1, percentile 99.7: ~3 of 1024 features a step) and each object's
(percentile, multiplier) is tuned on the tuning seeds. `--style-tuning dominance` keeps the
styles' fixed setting and tunes only their minimum dominance among --tune-dominances; `full`
tunes styles over the objects' grid. Every part resumes where it stopped; --parts runs a subset. Targets: styles UA >= 95, IRA >= 90, CRA >= 90;
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
from saeuron.ablate import FIRING_RULES, SELECTIONS, SETTING_DEFAULTS, load_ablation_site  # noqa: E402
from saeuron.demo import OBJECT_HOOKPOINT, STYLE_HOOKPOINT, DemoConfig, build_run  # noqa: E402
from saeuron.evaluate import TUNING_GRID, full_answer_set, generate_answer_set, markdown_report, parse_grid, parse_target_spec, run_evaluation  # noqa: E402
from saeuron.cli_args import parse_seeds  # noqa: E402
from bench_common import BENCH_HOOKPOINTS  # noqa: E402
from saeuron.pipelines import SamplerConfig, load_pipeline, resolve_sampler, sample  # noqa: E402


PARTS = {  # name -> (hookpoint, targets, erased together)
    "styles": (STYLE_HOOKPOINT, parse_target_spec("all-styles"), False),
    "three_styles_together": (STYLE_HOOKPOINT, ["style:neon", "style:ocean", "style:lava"], True),
    "objects": (OBJECT_HOOKPOINT, parse_target_spec("all-objects"), False),
}
# SAeUron's fixed style setting (percentile 99.999 of 20480 latents there, 99.7 of 1024 here; multiplier -1; no dominance filter)
STYLE_SETTING = SETTING_DEFAULTS


def time_ratio(pipe, run: Path, sampler: SamplerConfig, repeats: int = 2) -> float:
    """Ablated generation time / plain generation time for the same 50 prompts, best of `repeats`, interleaved."""
    site = load_ablation_site(run / "saes" / STYLE_HOOKPOINT, pipe)
    plan = site.plan(["style:neon"], **STYLE_SETTING)
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
    p.add_argument("--style-tuning", default="none", choices=("none", "dominance", "full"),
                   help="none (default, SAeUron): one fixed style setting; dominance: tune only the styles' minimum dominance; "
                        "full: tune styles over the objects' grid")
    p.add_argument("--tune-dominances", default="0", help="minimum dominances searched wherever settings are tuned "
                                                          "(default 0: SAeUron's selection alone; see `saeuron evaluate --help`)")
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
    build_run(args.run, DemoConfig(cache_seeds=tuple(parse_seeds(args.cache_seeds)), eval_seeds=tuple(parse_seeds(args.eval_seeds))), pipe, BENCH_HOOKPOINTS)
    eval_seeds, tune_seeds = parse_seeds(args.eval_seeds), parse_seeds(args.tune_seeds)
    dominances = parse_grid(None, None, args.tune_dominances)["dominance"]
    base_images = generate_answer_set(pipe, full_answer_set(eval_seeds), sampler)  # shared by every part
    summary = {}
    for name in parts:
        hookpoint, targets, together = PARTS[name]
        tuning = "full" if hookpoint == OBJECT_HOOKPOINT else args.style_tuning
        searched = TUNING_GRID if tuning == "full" else {k: (v,) for k, v in STYLE_SETTING.items()}
        grid = {**searched, "dominance": dominances}
        fixed = STYLE_SETTING if tuning == "none" else None
        variant = [rule for rule, default in ((args.selection, "saeuron"), (args.firing, "mean")) if rule != default]
        if hookpoint == STYLE_HOOKPOINT and tuning != "none":
            variant.append(f"tuned-{tuning}")
        if tuning != "none" and dominances != (0.0,):
            variant.append("dominance-" + "-".join(f"{d:g}" for d in dominances))
        label = "_".join([name, *variant])
        res = run_evaluation(args.run / "saes" / hookpoint, targets, eval_seeds, tune_seeds if tuning != "none" else None, sampler,
                             together, args.run / "eval" / f"bench_{label}.json", args.run / "report" / label, pipe=pipe,
                             base_images=base_images, selection=args.selection, firing=args.firing, fixed=fixed,
                             grid=grid)
        print(f"## {name}\n\n{markdown_report(res)}")
        summary[name] = res["mean"]
    summary["ablated/plain generation time"] = round(time_ratio(pipe, args.run, sampler), 3)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
