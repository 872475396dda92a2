"""Which cross-attention blocks carry a concept past an SAE ablation: hide the concept's word from chosen blocks.

    python scripts/probe_routes.py --sae activations/demo/saes/up_blocks.0.attentions.1 --target object:star \
        --styles sketch,candy,ocean --seeds 230-244 --setting 99.5/-10/2/0.2 --variant 1/none/0 --variant 1/down_blocks.1/0

Each variant is `ABLATE/BLOCKS/FROM`: ABLATE 1 applies the SAE ablation at the setting (percentile / multiplier /
minimum dominance / start), 0 does not; BLOCKS is `none`, `all`, `all-but:PREFIXES` or module-name prefixes, comma-separated
(e.g. `down_blocks.1`, `down_blocks.1,up_blocks.1.attentions`, `mid_block`) whose cross-attentions (`attn2`) get, on the conditional half,
the prompt without the target's word ("a star in sketch style" -> "a in sketch style") from denoising step FROM on.
Prints, per style, how many of the target's images the classifier still calls the target.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from saeuron.ablate import ablate_acts, load_ablation_site, plan_ablation  # noqa: E402
from saeuron.cli_args import parse_seeds  # noqa: E402
from saeuron.concept_set import Concept  # noqa: E402
from saeuron.evaluate import default_judge  # noqa: E402
from saeuron.hooks import intervene  # noqa: E402
from saeuron.pipelines import SamplerConfig, load_pipeline, prompt_conditions, resolve_sampler, sample  # noqa: E402


def block_filter(spec: str):
    """Which attn2 module names a BLOCKS spec covers."""
    if spec == "none":
        return lambda name: False
    if spec == "all":
        return lambda name: True
    if spec.startswith("all-but:"):
        kept = tuple(spec.removeprefix("all-but:").split(","))
        return lambda name: not name.startswith(kept)
    return lambda name: name.startswith(tuple(spec.split(",")))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sae", type=Path, required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--styles", required=True, help="styles whose target images to generate (comma list)")
    p.add_argument("--seeds", default="230-244")
    p.add_argument("--setting", default="99.5/-10/2/0.2", help="percentile/multiplier/dominance/start")
    p.add_argument("--variant", action="append", required=True)
    args = p.parse_args()
    target = Concept.parse(args.target)
    if target.kind != "object":
        raise SystemExit("the prompts are 'a OBJECT in STYLE style': give an object:VALUE target")
    pipe = load_pipeline()
    seeds, styles = parse_seeds(args.seeds), args.styles.split(",")
    prompts = [f"a {target.value} in {s} style" for s in styles for _ in seeds]
    image_seeds = [x for _ in styles for x in seeds]
    config = dataclasses.replace(resolve_sampler(pipe, SamplerConfig()), batch_size=len(prompts))  # one batch: the swap sees all
    hidden = prompt_conditions(pipe, [q.replace(f" {target.value} ", " ") for q in prompts])["encoder_hidden_states"]
    site = load_ablation_site(args.sae, pipe)
    percentile, multiplier, dominance, start = map(float, args.setting.split("/"))
    plan = plan_ablation(site.scores, [args.target], multiplier, percentile=percentile, min_dominance=dominance, start=start)
    judge = default_judge()
    for variant in args.variant:
        ablate, spec, first = variant.split("/")
        step = {"now": 0}

        def swap(module, a, kwargs):
            ehs = kwargs.get("encoder_hidden_states")
            if step["now"] >= int(first) and ehs is not None and len(ehs) == 2 * len(hidden):
                kwargs["encoder_hidden_states"] = torch.cat([ehs[: len(hidden)], hidden.to(ehs)])  # [uncond; cond without the word]
            return a, kwargs

        covered = block_filter(spec)
        handles = [m.register_forward_pre_hook(swap, with_kwargs=True) for n, m in pipe.unet.named_modules()
                   if n.endswith("attn2") and covered(n)]
        try:
            with torch.no_grad(), intervene(pipe, site.hookpoint, lambda x, s, t: ablate_acts(site.sae, x, plan.at(s, t) if ablate == "1" else None),
                                            capture=site.capture) as hook:
                def on_step(i: int, t: int) -> None:
                    step["now"] = i
                    hook.on_step(i, t)

                labels = judge.label(sample(pipe, prompts, image_seeds, config, on_step=on_step))
        finally:
            for h in handles:
                h.remove()
        counts = {s: sum(1 for q, lab in zip(prompts, labels) if f" {s} " in q and lab.get("object") == target.value) for s in styles}
        print(f"| {variant} ({len(handles)} attn2 hidden) | " + " | ".join(f"{s} {n}/{len(seeds)}" for s, n in counts.items()) + " |", flush=True)


if __name__ == "__main__":
    main()
