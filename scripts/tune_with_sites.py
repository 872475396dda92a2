"""Tune a bench variant's object setting at the object block on another run's SAEs, with the variant's other sites on at
their fixed settings, as `scripts/bench_methods.py` tunes it (same grid, tuning seeds and `WithFixedSites`); nothing is
evaluated. It checks whether a recipe holds on SAEs other than the bench's, e.g. the demo's:

    python scripts/tune_with_sites.py --saes activations/sites/saes --variant saeuron-xattn-t5 \
        --targets object:star,object:ring,object:heart --out tuned/

Writes OUT/<target>.json (`evaluate.tune_target`'s record: the chosen setting and every grid point tried).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402

import bench_methods as bench  # noqa: E402
from saeuron.ablate import load_ablation_site  # noqa: E402
from saeuron.cli_args import parse_seeds  # noqa: E402
from saeuron.demo import OBJECT_HOOKPOINT  # noqa: E402
from saeuron.evaluate import tune_target  # noqa: E402
from saeuron.pipelines import SamplerConfig, load_pipeline, resolve_sampler  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--saes", type=Path, required=True, help="a folder of SAE folders named by hookpoint (a run's saes/)")
    p.add_argument("--variant", default="saeuron-xattn-t5", help="a bench variant whose object rule is a grid")
    p.add_argument("--targets", default="object:star,object:ring,object:heart")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    grid = (bench.VARIANTS.get(args.variant, (None, None, None))[2] or {}).get("object")
    if not isinstance(grid, dict):
        raise SystemExit(f"variant {args.variant!r} has no object tuning grid; valid: "
                         + ", ".join(n for n, v in bench.VARIANTS.items() if v[2] and isinstance(v[2]["object"], dict)))
    seeds = parse_seeds(bench.TUNE_SEEDS.get(args.variant, bench.DEFAULT_TUNE_SEEDS))
    pipe = load_pipeline(device=args.device)
    sampler = resolve_sampler(pipe, SamplerConfig())
    hookpoints, setting = bench.EXTRA_SITES.get(args.variant, {}).get("object", ((), {}))
    site = bench.WithFixedSites(load_ablation_site(args.saes / OBJECT_HOOKPOINT, pipe),
                                [(load_ablation_site(args.saes / h, pipe), setting) for h in hookpoints])
    args.out.mkdir(parents=True, exist_ok=True)
    for target in filter(None, args.targets.split(",")):
        start = time.time()
        tuned = tune_target(pipe, site, target, seeds, sampler, grid)
        (args.out / f"{bench.slug(target)}.json").write_text(json.dumps(tuned, indent=1))
        print(target, {k: tuned[k] for k in ("multiplier", "start", "UA", "IRA", "CRA")}, f"{time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
