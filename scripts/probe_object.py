"""Compare ablation designs for one target on development seeds, on a subset of the answer set.

    python scripts/probe_object.py --sae RUN/saes/up_blocks.0.attentions.1 --target object:star --seeds 200-204 \
        --variant demo:percentile=99.5,multiplier=-20 --variant early:percentile=99.5,multiplier=-20,window=0-12

Each variant is `NAME:key=value,...` with the keys percentile, multiplier, dominance, selection, firing and window
(a step range `lo-hi`, as `plan_ablation`'s step_window), start (the fraction of steps left unablated), also (more SAE
sites ablating the target in the same pass, `HOOKPOINT/percentile/multiplier/dominance/start` joined by `+`, each the SAE
folder beside --sae named by its hookpoint), direction (a supervised control without an SAE: `HOOKPOINT/gamma` joined by `+`;
at each hookpoint, from the same start, the component of every token along the target's mean-difference direction of that
step in the scores' cache is pulled back towards the other images' mean, gamma times the excess) and context (a percentile P > 0: add, for each value of the
other kind, the features above P of the target's scores on that value's images alone; `ImageStepMeans.context_scores`). The images are every image of the target and `--retain`
images of each other concept of its kind (`tuning_answer_set`), so UA is on 10 x seeds images and IRA on the rest.
Prints one row per variant and writes them to `--out` (JSON) if given, with the target images that survive.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402

from saeuron.ablate import ablations_applied, load_ablation_site, merge_plans, plan_ablation, plan_for_setting, start_step  # noqa: E402
from saeuron.cache.reader import read_rows, row_provenance  # noqa: E402
from saeuron.cache.store import open_store  # noqa: E402
from saeuron.concepts import image_step_means, score_file_config  # noqa: E402
from saeuron.cli_args import parse_seeds  # noqa: E402
from saeuron.evaluate import default_judge, tuning_answer_set, unlearning_metrics  # noqa: E402
from saeuron.hooks import intervene  # noqa: E402
from saeuron.methods.base import SampleHooks  # noqa: E402
from saeuron.pipelines import SamplerConfig, load_pipeline, resolve_sampler, sample  # noqa: E402

KEYS = {"percentile": float, "multiplier": float, "dominance": float, "selection": str, "firing": str, "window": str, "context": float,
        "start": float, "also": str, "direction": str}


def parse_variant(text: str) -> tuple[str, dict]:
    """'NAME:key=value,...' -> (NAME, settings)."""
    name, _, body = text.partition(":")
    settings = {"percentile": 99.5, "multiplier": -20.0, "dominance": 0.0, "selection": "saeuron", "firing": "mean", "window": None,
                "context": 0.0, "start": 0.0, "also": "", "direction": ""}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        if key not in KEYS:
            raise SystemExit(f"unknown variant key {key!r}; valid: {', '.join(KEYS)}")
        settings[key] = KEYS[key](value)
    return name, settings


@functools.lru_cache(maxsize=None)
def target_directions(cache: Path, hookpoint: str, target: str) -> dict[int, tuple[torch.Tensor, float]]:
    """Per cached step, the target's mean-difference direction (its images minus the rest, unit norm) and the rest's
    mean along it, from the store's committed rows (computed once per hookpoint)."""
    kind, value = target.split(":", 1)
    acts, rows = read_rows(cache, hookpoint), row_provenance(cache, hookpoint)
    is_target = torch.tensor([row.get(kind) == value for row in open_store(cache).prompts])[torch.from_numpy(rows["prompt"]).long()]
    step = torch.from_numpy(rows["step"].astype("int64"))
    out = {}
    for st in step.unique().tolist():
        on, rest = acts[(step == st) & is_target].mean(0), acts[(step == st) & ~is_target].mean(0)
        d = (on - rest) / (on - rest).norm()
        out[st] = (d, float(rest @ d))
    return out


def direction_pull(cache: Path, hookpoint: str, target: str, gamma: float, first_step: int):
    """An intervention pulling each token's component along the target's direction of the step back towards the rest's
    mean, gamma times the excess, from step `first_step` on."""
    directions = target_directions(cache, hookpoint, target)

    def fn(x, step_index, _t):
        if step_index is None or step_index < first_step or step_index not in directions:
            return x
        d, mean = directions[step_index]
        d = d.to(x)
        return x - gamma * ((x @ d) - mean).clamp(min=0)[..., None] * d

    return fn


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sae", type=Path, required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--seeds", default="200-204")
    p.add_argument("--retain", type=int, default=6, help="images of each other concept of the target's kind")
    p.add_argument("--variant", action="append", required=True)
    p.add_argument("--out", type=Path)
    p.add_argument("--threads", type=int, default=2, help="torch threads of this process")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline()
    config = resolve_sampler(pipe, SamplerConfig())
    answers = tuning_answer_set(args.target, parse_seeds(args.seeds), args.retain)
    judge = default_judge()  # loaded once, not per variant
    kind, value = args.target.split(":", 1)
    rows, contexts = [], None  # contexts: per-context scores, computed once when a variant asks
    for text in args.variant:
        name, s = parse_variant(text)
        site = load_ablation_site(args.sae, pipe, selection=s["selection"], firing=s["firing"])
        window = tuple(int(v) for v in s["window"].split("-")) if s["window"] else None
        plan = plan_ablation(site.scores, [args.target], s["multiplier"], percentile=s["percentile"], step_window=window,
                             selection=s["selection"], firing=s["firing"], min_dominance=s["dominance"], start=s["start"])
        if s["context"]:
            if contexts is None:
                cache = score_file_config(args.sae / "concepts.h5")["cache"]
                context_kind = next(k for k in site.scores.kinds if k != kind)
                contexts = image_step_means(Path(cache), site.hookpoint, site.sae).context_scores(context_kind)
            plan = merge_plans(plan, *(plan_ablation(c, [args.target], s["multiplier"], percentile=s["context"], step_window=window,
                                                     selection=s["selection"], firing=s["firing"], min_dominance=s["dominance"])
                                       for c in contexts.values()))
        edits = [(site.sae, site.hookpoint, plan, site.capture)]
        for spec in filter(None, s["also"].split("+")):
            hookpoint, *values = spec.split("/")
            extra = load_ablation_site(args.sae.parent / hookpoint, pipe, selection=s["selection"], firing=s["firing"])
            setting = dict(zip(("percentile", "multiplier", "dominance", "start"), map(float, values)))
            extra_plan = plan_for_setting(extra.scores, args.target, setting, s["selection"], s["firing"])
            edits.append((extra.sae, extra.hookpoint, extra_plan, extra.capture))
            plan = merge_plans(plan, extra_plan)  # for the feature count only
        start = time.time()
        with torch.no_grad(), ablations_applied(pipe, edits) as on_step, contextlib.ExitStack() as stack:
            for spec in filter(None, s["direction"].split("+")):
                hookpoint, gamma = spec.split("/")
                cache = Path(score_file_config(args.sae / "concepts.h5")["cache"])
                fn = direction_pull(cache, hookpoint, args.target, float(gamma), start_step(s["start"], config.steps))
                hook = stack.enter_context(intervene(pipe, hookpoint, fn))
                on_step = SampleHooks.together([SampleHooks(on_step), SampleHooks(hook.on_step)]).on_step
            images = sample(pipe, answers.prompts(), answers.image_seeds(), config, on_step=on_step)
        labels = judge.label(images)
        m = unlearning_metrics(args.target, answers, labels)
        survivors = [f"{prompt} @ {seed}" for prompt, seed, truth, lab in zip(answers.prompts(), answers.image_seeds(), answers.truth(), labels)
                     if truth.get(kind) == value and lab.get(kind) == value]  # target images the judge still calls the target
        rows.append({"variant": name, **s, "features": plan.n_features(), **m, "images": len(images), "s": round(time.time() - start),
                     "survivors": survivors})
        print(f"| {name} | {m['UA']:.1f} | {m['IRA']:.1f} | {m['CRA']:.1f} | {plan.n_features()} | {rows[-1]['s']} s |", flush=True)
        if args.out:
            args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
