"""Attribute the judge's verdict to SAE features, and ablate the features it points at (a measured dead end, session 22).

    python scripts/probe_attribution.py --sae RUN/saes/up_blocks.0.attentions.1 --target object:star \
        --attribution-seeds 100-109 --seeds 275-279 --variant top8:k=8 --variant added4:k=4,start=0,on_base=1

Every step of the sampler gets a gate per SAE feature (1: unchanged), so the hookpoint's signal becomes
x + decode(gate * f) - decode(f). One backward pass through all denoising steps and the judge gives, per step and
feature, the derivative of the judge's margin for the image's true value (its logit minus the logsumexp of the others)
with respect to the gate: attribution patching (Syed et al., 2023; Marks et al., 2024) on SAE features of a diffusion
model. It is summed over the target's images (A) and over the other images of the answer set (B).

A variant `NAME:k=K,multiplier=M,start=S,penalty=L,on_base=0|1` ablates, from the fraction S of the steps on, the K
features of each step with the highest A - L * max(B, 0), scaled as SAeUron scales (M times the target's mean
activation, where the feature fires above its threshold). With on_base=1 the attribution is taken at the demo's
ablated state (99.5 / -10, dominance 2, start 0.2), with a softplus of the target's margin, so that it weighs the
images that still show the target, and the K features are added to the demo's. Prints UA / IRA / CRA per variant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402
import torch  # noqa: E402

from saeuron.ablate import (AblationPlan, StepAblation, ablate_acts, ablations_applied, cached_step_timesteps,  # noqa: E402
                            firing_thresholds, load_ablation_site, merge_plans, plan_ablation)
from saeuron.cli_args import parse_seeds  # noqa: E402
from saeuron.concepts import Concept  # noqa: E402
from saeuron.evaluate import default_judge, tuning_answer_set, unlearning_metrics  # noqa: E402
from saeuron.hooks import intervene  # noqa: E402
from saeuron.minicanvas.classifier import load_classifier  # noqa: E402
from saeuron.minicanvas.world import OBJECTS, STYLE_NAMES  # noqa: E402
from saeuron.pipelines import SamplerConfig, load_pipeline, resolve_sampler, sample  # noqa: E402

DEMO_SETTING = {"percentile": 99.5, "multiplier": -10.0, "min_dominance": 2.0, "start": 0.2}


def margins(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Each row's logit of its true class minus the logsumexp of the others (it does not saturate as log p does)."""
    own = logits.gather(1, truth[:, None])[:, 0]
    return own - logits.scatter(1, truth[:, None], float("-inf")).logsumexp(1)


def attribution(pipe, site, target: str, seeds: list[int], config, base: AblationPlan | None, batch: int = 4):
    """(A, B): per (step, feature), d margin / d gate summed over the target's images and over the others (per image)."""
    kind, _ = target.split(":", 1)
    head, values = (1, OBJECTS) if kind == "object" else (0, STYLE_NAMES)
    sae, clf = site.sae, load_classifier()
    for p in [*pipe.unet.parameters(), *sae.parameters(), *clf.parameters()]:
        p.requires_grad_(False)
    gate = torch.ones(config.steps, sae.W_dec.shape[0], device=sae.W_dec.device, requires_grad=True)

    def gated(acts, step, t):
        if base is not None:
            acts = ablate_acts(sae, acts, base.at(step, t))
        f = sae.encode(acts.to(sae.W_dec.dtype))
        return acts + (((gate[step] - 1) * f) @ sae.W_dec).to(acts.dtype)

    answers = tuning_answer_set(target, seeds, 1)
    prompts, image_seeds, truth = answers.prompts(), answers.image_seeds(), answers.truth()
    A, B = torch.zeros_like(gate), torch.zeros_like(gate)
    n_target = sum(Concept.parse(target).value == t.get(kind) for t in truth)
    with intervene(pipe, site.hookpoint, gated, capture=site.capture) as hook:
        for i in range(0, len(prompts), batch):
            rows = truth[i : i + batch]
            images = sample(pipe, prompts[i : i + batch], image_seeds[i : i + batch], config, on_step=hook.on_step, grad=True)
            m = margins(clf(images.float())[head], torch.tensor([values.index(r[kind]) for r in rows], device=images.device))
            on = torch.tensor([r[kind] == target.split(":", 1)[1] for r in rows], device=m.device)
            loss_on = (torch.nn.functional.softplus(m[on]) if base is not None else m[on]).sum()
            for total, loss in ((A, loss_on), (B, m[~on].sum())):
                if loss.requires_grad:
                    total += torch.autograd.grad(loss, gate, retain_graph=True)[0]
    return A / max(n_target, 1), B / max(len(truth) - n_target, 1)


def attribution_plan(site, target: str, A: torch.Tensor, B: torch.Tensor, k: int, multiplier: float, start: float,
                     penalty: float) -> AblationPlan:
    """Per step from `start` on, the k features of highest A - penalty * max(B, 0) (positive only), scaled as SAeUron."""
    scores = site.scores
    row = scores.index(target)
    rank = (A - penalty * B.clamp(min=0)).cpu().numpy()
    thresholds = firing_thresholds(scores, row, [row], "mean")
    steps = {}
    for step in range(int(round(start * len(rank))), len(rank)):
        ids = [int(i) for i in np.argsort(-rank[step])[:k] if rank[step, i] > 0]
        if ids:
            ids.sort()
            steps[step] = StepAblation(torch.tensor(ids), torch.tensor([multiplier * float(scores.mean_acts[row, step, i]) for i in ids]),
                                       torch.tensor([float(thresholds[step, i]) for i in ids], dtype=torch.float32))
    return AblationPlan(steps, cached_step_timesteps(scores))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sae", type=Path, required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--attribution-seeds", default="100-109", help="tuning seeds the attribution is taken on")
    p.add_argument("--seeds", default="275-279", help="development seeds the variants are judged on")
    p.add_argument("--variant", action="append", default=[])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline()
    config = resolve_sampler(pipe, SamplerConfig())
    site = load_ablation_site(args.sae, pipe)
    demo = plan_ablation(site.scores, [args.target], DEMO_SETTING["multiplier"], percentile=DEMO_SETTING["percentile"],
                         min_dominance=DEMO_SETTING["min_dominance"], start=DEMO_SETTING["start"])
    attributions = {}
    answers, judge = tuning_answer_set(args.target, parse_seeds(args.seeds), 1), default_judge()
    for text in ["demo:", *args.variant]:
        name, _, body = text.partition(":")
        s = {"k": 8, "multiplier": -10.0, "start": 0.2, "penalty": 1.0, "on_base": 0, **{k: float(v) for k, v in
                                                                                        (i.split("=") for i in body.split(",") if i)}}
        plan = demo
        if name != "demo":
            if s["on_base"] not in attributions:
                attributions[s["on_base"]] = attribution(pipe, site, args.target, parse_seeds(args.attribution_seeds), config,
                                                         demo if s["on_base"] else None)
            A, B = attributions[s["on_base"]]
            plan = attribution_plan(site, args.target, A, B, int(s["k"]), s["multiplier"], s["start"], s["penalty"])
            plan = merge_plans(demo, plan) if s["on_base"] else plan
        with torch.no_grad(), ablations_applied(pipe, [(site.sae, site.hookpoint, plan, site.capture)]) as on_step:
            images = sample(pipe, answers.prompts(), answers.image_seeds(), config, on_step=on_step)
        m = unlearning_metrics(args.target, answers, judge.label(images))
        print(f"| {name} | {body} | {m['UA']:.1f} | {m['IRA']:.1f} | {m['CRA']:.1f} | {plan.n_features()} |", flush=True)


if __name__ == "__main__":
    main()
