"""`saeuron demo`: the end-to-end SAeUron job on the shipped model, laid out as a run directory.

cache -> train -> score -> unlearn one style and one object -> evaluate -> report, each stage
skipped when its output already exists, so an interrupted demo resumes where it stopped:

    activations/demo/
      cache.h5                 activations of both hookpoints, every step, conditional branch
      saes/<hookpoint>/        SAE (sae-lens format), train_config.json, metrics.json, concepts.h5; one per hookpoint:
                               the style block, the object block and the five 16x16 cross-attentions
      unlearned/saeuron-object/  the object erased at its sites (`saeuron unlearn`'s format; what the object is judged on)
      unlearned/saeuron-demo/  both targets erased in one folder
      eval/results.json        UA / IRA / CRA of each target
      report/                  report.md, base.png, ablated_*.png
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .cli_args import check_output, device_from_args, parse_seeds
from .devices import dtype_name
from .errors import UserError
from .pipelines import SamplerConfig, load_pipeline, resolve_sampler

# SAeUron hooks up_blocks.1.attentions.2 for styles and up_blocks.1.attentions.1 for objects on
# Stable Diffusion. On minicanvas the styles' block is the same, but objects are carried one block
# earlier, in the 8x8 up_blocks.0.attentions.1: there 87% of the objects' selected features are
# specific to their object, against 5% on up_blocks.1.attentions.1, whose ablation repaints styles
# (`scripts/probe_hookpoints.py`; benchmarks/RESULTS.md, "Where objects live on minicanvas").
STYLE_HOOKPOINT = "up_blocks.1.attentions.2"
OBJECT_HOOKPOINT = "up_blocks.0.attentions.1"
SAEURON_OBJECT_HOOKPOINT = "up_blocks.1.attentions.1"
# The 16x16 blocks also draw an object from its word: each reads the prompt through its own cross-attention, which an
# edit at the 8x8 object block does not reach (benchmarks/RESULTS.md, session 16: with the word hidden from them, the
# stars the 8x8 ablation misses go). So the demo also ablates the object on SAEs of those cross-attentions' outputs.
OBJECT_XATTN_HOOKPOINTS = tuple(f"{block}.transformer_blocks.0.attn2" for block in (
    "down_blocks.1.attentions.0", "down_blocks.1.attentions.1", "up_blocks.1.attentions.0", "up_blocks.1.attentions.1",
    "up_blocks.1.attentions.2"))
DEMO_HOOKPOINTS = (STYLE_HOOKPOINT, OBJECT_HOOKPOINT, *OBJECT_XATTN_HOOKPOINTS)

# The SAEs train with the named default set "demo" of `saeuron train` (saeuron/train.py: DEFAULT_SETS; topk, k 8,
# expansion 16, lr 1e-2, AuxK 1.0, batch 4096): the demo's fixed ablation settings were chosen on SAEs built so,
# and naming the set keeps a change of `train`'s width heuristic from changing the demo.
SAE_DEFAULTS = "demo"


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs: cache seeds, SAE tokens, the two targets and evaluation seeds."""

    cache_seeds: tuple[int, ...] = (0,)
    sae_tokens: int = 1_500_000
    # a cross-attention output mixes the value vectors of the prompt's few words: a low-rank signal that 256 latents
    # (expansion 4) fit from 400k tokens (validation FVU 0.04-0.07; at expansion 16, 70-85% of latents stay dead)
    xattn_tokens: int = 400_000
    xattn_expansion: int = 4
    style_target: str = "style:neon"
    object_target: str = "object:star"
    # final-number seeds: disjoint from the seed (100) that tuned object_setting and from the development seeds
    # (200-229) on which its start and dominance were chosen
    eval_seeds: tuple[int, ...] = (300,)
    # a fixed setting per kind instead of tuning, to stay within 6 minutes (keys of ablate.SETTING_DEFAULTS): SAeUron's
    # style setting; for objects, the first fifth of the denoising steps left unablated (start 0.2: it erases the star
    # on unseen seeds where ablating every step does not; chosen on development seeds 200-204), the star's percentile
    # and multiplier tuned at that start on seed 100 with this demo's SAE (session 14), and only features the object
    # fires at least twice as strongly as any other object (dominance 2: star UA 85 -> 89-91 on development seeds
    # 205-229; benchmarks/RESULTS.md, session 15)
    style_setting: dict = field(default_factory=lambda: {"percentile": 99.7, "multiplier": -1.0, "dominance": 0.0, "start": 0.0})
    object_setting: dict = field(default_factory=lambda: {"percentile": 99.5, "multiplier": -10.0, "dominance": 2.0, "start": 0.2})
    # the object's setting on each cross-attention SAE: SAeUron's multiplier -1 (-10 there repaints kept styles) with
    # the object setting's dominance and start, ~2.5 of 256 latents a step (development seeds 275-279 and 285-294:
    # benchmarks/RESULTS.md, session 22)
    xattn_setting: dict = field(default_factory=lambda: {"percentile": 99.0, "multiplier": -1.0, "dominance": 2.0, "start": 0.2})

    def training(self, hookpoint: str) -> dict:
        """The hookpoint's SAE training values that differ from the named default set's (always the tokens)."""
        if hookpoint in OBJECT_XATTN_HOOKPOINTS:
            return {"tokens": self.xattn_tokens, "expansion": self.xattn_expansion}
        return {"tokens": self.sae_tokens}


def build_run(out: Path, config: DemoConfig = DemoConfig(), pipe=None, hookpoints: tuple[str, ...] = DEMO_HOOKPOINTS) -> Path:
    """Cache the hookpoints (one store), train and score an SAE on each into the run directory `out`
    (each stage skipped when its output exists)."""
    from .cache import CacheConfig, cache_activations, open_store
    from .concepts import score_cache
    from .concept_set import ConceptSet
    from .sae import load_sae
    from .train import TrainConfig, train

    store = out / "cache.h5"
    if store.exists() and (missing := sorted(set(hookpoints) - set(open_store(store).hookpoints))):
        raise UserError(f"the existing store {str(store)!r} has no activations of {', '.join(missing)} (written by an older "
                        f"demo or for other hookpoints); give another --out, or remove that run directory")
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_config.json").write_text(json.dumps(config.__dict__, indent=1))
    pipe = pipe or load_pipeline()
    device, dtype = pipe.unet.device, pipe.unet.dtype  # the SAEs train and score where the pipeline runs
    sampler = resolve_sampler(pipe, SamplerConfig())
    cache_cfg = CacheConfig(hookpoints=tuple(sorted(hookpoints)), seeds=config.cache_seeds, steps=sampler.steps, cfg=sampler.cfg)
    if not (store.exists() and open_store(store).complete):
        print("[1/4] caching activations")
        cache_activations(pipe, ConceptSet.minicanvas(), store, cache_cfg, resume=store.exists())
    for hookpoint in hookpoints:
        sae_dir = out / "saes" / hookpoint
        if not (sae_dir / "metrics.json").exists():
            print(f"[2/4] training the SAE of {hookpoint}")
            train(TrainConfig(out=str(sae_dir), hookpoint=hookpoint, cache=str(store), defaults=SAE_DEFAULTS, **config.training(hookpoint),
                              device=str(device), dtype=dtype_name(dtype)), resume=sae_dir.exists())
        if not (sae_dir / "concepts.h5").exists():
            print(f"[3/4] scoring concepts on {hookpoint}")
            sae = load_sae(sae_dir, hookpoint=hookpoint, device=device, dtype=dtype).eval()
            score_cache(store, hookpoint, sae).save(sae_dir / "concepts.h5", {"cache": str(store), "hookpoint": hookpoint})
    return out


def check_seeds(out: Path, config: DemoConfig) -> None:
    """Refuse evaluation seeds that the concept scores would be computed on: those of the store already in `out`
    (read from the store, whatever the flags say), else the cache seeds the demo would use."""
    from .cache import open_store

    store = out / "cache.h5"
    if store.exists():
        seeds, where = [int(s) for s in open_store(store).config["seeds"]], f"the existing store {str(store)!r} holds seeds"
    else:
        seeds, where = list(config.cache_seeds), "--cache-seeds are"
    if shared := sorted(set(seeds) & set(config.eval_seeds)):
        raise UserError(f"evaluation seeds {shared} overlap the seeds the concept scores are computed on ({where} "
                        f"{sorted(seeds)}); give --eval-seeds disjoint from them, or another --out")


def run_demo(out: Path, config: DemoConfig = DemoConfig(), device=None, dtype="float32") -> dict:
    """Run every stage into the run directory `out` on `device` (None: auto) in `dtype`; returns the evaluation results."""
    from .concept_set import ConceptSet
    from .evaluate import full_answer_set, generate_answer_set, markdown_report, run_evaluation, run_unlearned_evaluation

    world = ConceptSet.minicanvas()
    for target, kind in ((config.style_target, "style"), (config.object_target, "object")):
        if world.check(target).kind != kind:  # before anything is written
            raise UserError(f"the demo erases a {kind} there, not {target!r}; valid: {', '.join(world.concepts(kind))}")
    check_seeds(out, config)
    pipe = load_pipeline(dtype=dtype, device=device)
    sampler = resolve_sampler(pipe, SamplerConfig())
    build_run(out, config, pipe)
    print("[4/4] unlearning and evaluating")
    base_images = generate_answer_set(pipe, full_answer_set(config.eval_seeds), sampler)  # shared by both targets
    style = run_evaluation(out / "saes" / STYLE_HOOKPOINT, [config.style_target], list(config.eval_seeds), None, sampler, False,
                           out / "eval" / f"{config.style_target.replace(':', '-')}.json", out / "report", pipe=pipe,
                           base_images=base_images, fixed=config.style_setting)
    # the object at its block and at the 16x16 cross-attentions together: one unlearned-model folder of those sites
    obj = run_unlearned_evaluation(unlearned_folder(out, config, pipe, [config.object_target]), list(config.eval_seeds), sampler,
                                   out / "eval" / f"{config.object_target.replace(':', '-')}.json", out / "report", pipe,
                                   base_images=base_images)
    results = {"targets": {**style["targets"], **obj["targets"]}, "base": style["base"], "mean": {**style["mean"], **obj["mean"]},
               "config": {**style["config"], "hookpoint": "per target"}}
    unlearned_folder(out, config, pipe)
    (out / "eval" / "results.json").write_text(json.dumps(results, indent=1))
    (out / "report" / "report.md").write_text("# saeuron demo\n\n" + markdown_report(results))
    return results


def unlearned_folder(out: Path, config: DemoConfig, pipe, targets: list[str] | None = None) -> Path:
    """The demo's targets (default: both) erased in one unlearned-model folder under `out/unlearned/`: the style at the
    style SAE, the object at the object SAE and the cross-attention SAEs, each at the demo's setting. Both targets give
    `saeuron-demo`, which the app shows beside the base model; one target gives `saeuron-<kind>`. `generate` and
    `evaluate --unlearned` take either. Writing a folder generates nothing."""
    from .concept_set import ConceptSet
    from .unlearn import RECORD_FILE, unlearn

    targets = targets or [config.style_target, config.object_target]
    name = "saeuron-demo" if len(targets) > 1 else f"saeuron-{targets[0].split(':')[0]}"
    folder = out / "unlearned" / name
    sites = [(STYLE_HOOKPOINT, config.style_target, config.style_setting), (OBJECT_HOOKPOINT, config.object_target, config.object_setting),
             *((h, config.object_target, config.xattn_setting) for h in OBJECT_XATTN_HOOKPOINTS)]
    sites = [(h, t, setting) for h, t, setting in sites if t in targets]
    if (folder / RECORD_FILE).exists() and json.loads((folder / RECORD_FILE).read_text()).get("targets") != targets:
        shutil.rmtree(folder)  # written for other --style / --object: derived from the SAEs, so rewritten
    if not (folder / RECORD_FILE).exists():
        kind = lambda t: t.split(":")[0]  # noqa: E731
        unlearn("saeuron", targets, folder, pipe, "minicanvas", ConceptSet.minicanvas(), 0,
                sae=[f"{out / 'saes' / h}@{kind(t)}" for h, t, _ in sites], site_settings=[{t: setting} for _, t, setting in sites],
                log=lambda s: None)
    return folder


def _cmd_demo(args) -> None:
    from .evaluate import markdown_report

    config = DemoConfig(cache_seeds=tuple(parse_seeds(args.cache_seeds)), eval_seeds=tuple(parse_seeds(args.eval_seeds)),
                        style_target=args.style, object_target=args.object)
    device, dtype = device_from_args(args)
    check_output(args.out, "run directory", folder=True)
    results = run_demo(Path(args.out), config, device, dtype)
    print(markdown_report(results))
    print(f"run directory: {args.out} (report in {Path(args.out) / 'report'})")


def register_cli(sub) -> None:
    """Add `demo`."""
    from .cli import command_help
    from .cli_args import add_device_args

    d = DemoConfig()
    p = sub.add_parser("demo", help=command_help("demo"))
    p.add_argument("--out", default="activations/demo", help="run directory (default activations/demo)")
    p.add_argument("--cache-seeds", default=",".join(map(str, d.cache_seeds)))
    p.add_argument("--eval-seeds", default=",".join(map(str, d.eval_seeds)))
    p.add_argument("--style", default=d.style_target, help=f"style to erase (default {d.style_target})")
    p.add_argument("--object", default=d.object_target, help=f"object to erase (default {d.object_target})")
    add_device_args(p)
    p.set_defaults(func=_cmd_demo)
