"""A target's images before and after ablation at several starts, one row each, to look at.

    python scripts/probe_start_grid.py --sae RUN/saes/up_blocks.0.attentions.1 --target object:star --seed 200 \
        --percentile 99.5 --multiplier -10 --starts 0,0.2 --out benchmarks/ablation_start_star.png

Rows: the base model, then the ablation from each start (0: every denoising step, as SAeUron). Columns: the target
in every value of the other kind (the minicanvas grid), on one seed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from saeuron.ablate import load_ablation_site, plan_ablation  # noqa: E402
from saeuron.concept_set import Concept  # noqa: E402
from saeuron.evaluate import image_grid, minicanvas_grid  # noqa: E402
from saeuron.pipelines import SamplerConfig, load_pipeline, resolve_sampler, sample  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sae", type=Path, required=True)
    p.add_argument("--target", default="object:star")
    p.add_argument("--seed", type=int, default=200)
    p.add_argument("--percentile", type=float, default=99.5)
    p.add_argument("--multiplier", type=float, default=-10.0)
    p.add_argument("--starts", default="0,0.2")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    pipe = load_pipeline()
    config = resolve_sampler(pipe, SamplerConfig())
    site = load_ablation_site(args.sae, pipe)
    target = Concept.parse(args.target)
    grid = minicanvas_grid()
    prompts = [row["prompt"] for row in grid.rows if row.get(target.kind) == target.value]
    seeds = [args.seed] * len(prompts)
    rows = [sample(pipe, prompts, seeds, config)]
    for start in (float(s) for s in args.starts.split(",")):
        plan = plan_ablation(site.scores, [args.target], args.multiplier, percentile=args.percentile, start=start)
        rows.append(site.sample(pipe, plan, prompts, seeds, config))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image_grid(torch.cat(rows), len(prompts)).save(args.out)
    print(f"wrote {args.out}: {len(rows)} rows x {len(prompts)} prompts ({', '.join(prompts[:2])}, ...)")


if __name__ == "__main__":
    main()
