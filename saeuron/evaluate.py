"""Measure generations on minicanvas with the shipped classifier: accuracies, PNG grids, reports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .pipelines import SamplerConfig, sample, to_uint8


@dataclass(frozen=True)
class AnswerSet:
    """The UnlearnCanvas answer set on minicanvas: every style x object, each with these seeds."""

    styles: tuple[str, ...]
    objects: tuple[str, ...]
    seeds: tuple[int, ...]
    only: tuple[tuple[str, str, int], ...] | None = None  # a subset of the rows (see tuning_answer_set)

    def rows(self) -> list[tuple[str, str, int]]:
        """(style, object, seed) for every image, style-major."""
        if self.only is not None:
            return list(self.only)
        return [(s, o, k) for s in self.styles for o in self.objects for k in self.seeds]

    def prompts(self) -> list[str]:
        """The prompt of every image."""
        from .minicanvas.world import style_prompt

        return [style_prompt(o, s) for s, o, _ in self.rows()]


def full_answer_set(seeds: Sequence[int]) -> AnswerSet:
    """Every style x object of the world with these seeds."""
    from .minicanvas.world import OBJECTS, STYLE_NAMES

    return AnswerSet(STYLE_NAMES, OBJECTS, tuple(int(s) for s in seeds))


def tuning_answer_set(target: str, seeds: Sequence[int], retain_per_concept: int | None = 2) -> AnswerSet:
    """The images a target's hyperparameters are tuned on: every image of the target, and
    `retain_per_concept` images of each other concept of its kind (None: the full answer set).

    UA and IRA (the tuning objective) come out as on the full set, from about a third of the
    images; the retained images rotate over the other kind's concepts and the seeds.
    """
    full = full_answer_set(seeds)
    if retain_per_concept is None:
        return full
    kind, _, name = target.partition(":")
    rows = full.rows()
    by_concept: dict[str, list[tuple[str, str, int]]] = {}
    for r in rows:
        by_concept.setdefault(r[0] if kind == "style" else r[1], []).append(r)
    if name not in by_concept:
        raise ValueError(f"the answer set has no image of {target!r}")
    chosen = list(by_concept[name])
    for i, (concept, concept_rows) in enumerate(by_concept.items()):
        if concept != name:
            step = max(1, len(concept_rows) // retain_per_concept)
            chosen += [concept_rows[(i + j * step) % len(concept_rows)] for j in range(min(retain_per_concept, len(concept_rows)))]
    order = {r: n for n, r in enumerate(rows)}
    return AnswerSet(full.styles, full.objects, full.seeds, tuple(sorted(set(chosen), key=order.__getitem__)))


def generate_answer_set(pipe, answers: AnswerSet, config: SamplerConfig, on_batch=None) -> torch.Tensor:
    """Generate the images of an answer set (N x 3 x H x W in [0, 1])."""
    rows = answers.rows()
    return sample(pipe, answers.prompts(), [k for _, _, k in rows], config, on_batch=on_batch)


def label_accuracy(images: torch.Tensor, answers: AnswerSet) -> dict:
    """Classifier accuracy (%) per head, overall and per style / per object, with every label."""
    from .minicanvas.classifier import classify

    labels = classify(images)
    rows = answers.rows()
    style_ok = np.array([lab.style == s for lab, (s, _, _) in zip(labels, rows)])
    object_ok = np.array([lab.object == o for lab, (_, o, _) in zip(labels, rows)])
    per_style = {s: 100 * float(np.mean([ok for ok, r in zip(style_ok, rows) if r[0] == s])) for s in answers.styles}
    per_object = {o: 100 * float(np.mean([ok for ok, r in zip(object_ok, rows) if r[1] == o])) for o in answers.objects}
    return {
        "style_accuracy": 100 * float(style_ok.mean()),
        "object_accuracy": 100 * float(object_ok.mean()),
        "per_style": per_style,
        "per_object": per_object,
        "labels": [vars(lab) for lab in labels],
    }


def image_grid(images: torch.Tensor, n_cols: int, scale: int = 3, pad: int = 1) -> Image.Image:
    """Tile images row-major into one PIL image, upscaled (nearest) for viewing."""
    arr = to_uint8(images)
    n, h, w, _ = arr.shape
    n_rows = -(-n // n_cols)
    canvas = np.full((n_rows * (h + pad) + pad, n_cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, img in enumerate(arr):
        r, c = divmod(i, n_cols)
        canvas[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = img
    grid = Image.fromarray(canvas)
    return grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)


def answer_set_grid(images: torch.Tensor, answers: AnswerSet, path: Path, seed_index: int = 0) -> Path:
    """Save a styles (rows) x objects (columns) grid of one seed of an answer set."""
    rows = answers.rows()
    keep = [i for i, (_, _, k) in enumerate(rows) if k == answers.seeds[seed_index]]
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images[keep], n_cols=len(answers.objects)).save(path)
    return path


# ---------------------------------------------------------------- unlearning metrics (UnlearnCanvas)


def unlearning_metrics(target: str, answers: AnswerSet, labels: list[dict], erased: Sequence[str] = ()) -> dict:
    """UA, IRA, CRA (%) of one erased concept from the classifier labels of the answer set.

    UA = 1 - accuracy on images of the target; IRA = accuracy (same head) on images of the
    other concepts of its kind; CRA = accuracy of the other head on every image. Images of
    the other concepts in `erased` (erased together with the target) count in neither.
    """
    kind, _, name = target.partition(":")
    other = "object" if kind == "style" else "style"
    gone = {c.partition(":")[::2] for c in erased} | {(kind, name)}
    rows = answers.rows()
    truth = [{"style": s, "object": o} for s, o, _ in rows]
    on_target = [lab[kind] == t[kind] for lab, t in zip(labels, truth) if t[kind] == name]
    in_domain = [lab[kind] == t[kind] for lab, t in zip(labels, truth) if (kind, t[kind]) not in gone]
    cross = [lab[other] == t[other] for lab, t in zip(labels, truth) if (other, t[other]) not in gone]
    if not on_target:
        raise ValueError(f"the answer set has no image of {target!r}")
    nan = float("nan")
    return {
        "UA": 100 * (1 - float(np.mean(on_target))),
        "IRA": 100 * float(np.mean(in_domain)) if in_domain else nan,
        "CRA": 100 * float(np.mean(cross)) if cross else nan,
    }


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (as FID does)."""
    from scipy import linalg

    mu_a, mu_b = feats_a.mean(0), feats_b.mean(0)
    cov_a, cov_b = np.cov(feats_a, rowvar=False), np.cov(feats_b, rowvar=False)
    covmean, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))


@torch.no_grad()
def fidelity(base_images: torch.Tensor, edited_images: torch.Tensor, base_labels: list[dict], edited_labels: list[dict]) -> dict:
    """How much of what should be kept changed: Frechet distance on classifier features, share of changed labels."""
    from .minicanvas.classifier import load_classifier

    model = load_classifier()
    fa, fb = model.features(base_images).numpy(), model.features(edited_images).numpy()
    changed = [a["style"] != b["style"] or a["object"] != b["object"] for a, b in zip(base_labels, edited_labels)]
    return {
        "frechet_classifier_features": frechet_distance(fa, fb) if len(fa) > 2 else float("nan"),
        "changed_label_share": 100 * float(np.mean(changed)),
        "mean_abs_pixel_change": float((base_images - edited_images).abs().mean()),
    }


# ---------------------------------------------------------------- unlearning runs


# SAeUron searches percentile {99.99, 99.995, 99.999} of 20480 latents (1-3 features a step) x gamma {-1, -5, ..., -30};
# at 1024 latents the same feature counts are percentiles 99.5-99.9. SAeUron has no dominance filter (0).
TUNING_GRID = {"percentile": (99.5, 99.7, 99.9), "multiplier": (-1.0, -5.0, -10.0, -20.0), "dominance": (0.0,)}
# how tune_target chooses among settings of equal objective (on 10 target images UA moves in steps of 10, so ties are common)
TIE_BREAK = "highest CRA"


def _labels_of(images: torch.Tensor) -> list[dict]:
    from .minicanvas.classifier import classify

    return [vars(label) for label in classify(images)]


def ablated_answer_set(pipe, site, targets: list[str], answers: AnswerSet, config: SamplerConfig, params: dict[str, dict]) -> torch.Tensor:
    """The answer set generated with the targets ablated together (`params[target]`: the target's setting)."""
    return site.sample(pipe, site.plan(targets, params=params), answers.prompts(), [k for _, _, k in answers.rows()], config)


def tune_target(pipe, site, target: str, seeds: Sequence[int], config: SamplerConfig, grid: dict = TUNING_GRID,
                retain_per_concept: int | None = 2) -> dict:
    """SAeUron's per-target search: the setting (percentile x multiplier x dominance) maximising
    (UA + IRA) / 2 on tuning seeds (on `tuning_answer_set`: the target's images and
    `retain_per_concept` of each other concept); among equals the highest CRA, then the first in
    grid order (TIE_BREAK). `tried` lists the metrics of every grid point."""
    import itertools

    answers = tuning_answer_set(target, seeds, retain_per_concept)
    tried = []
    for values in itertools.product(*(grid.get(k, TUNING_GRID[k]) for k in TUNING_GRID)):
        setting = dict(zip(TUNING_GRID, values))
        m = unlearning_metrics(target, answers, _labels_of(ablated_answer_set(pipe, site, [target], answers, config, {target: setting})))
        tried.append({**setting, "objective": (m["UA"] + m["IRA"]) / 2, **m})
    best = max(tried, key=lambda point: (point["objective"], point["CRA"]))  # max keeps the first of equals
    return {**best, "tried": tried}


def evaluate_unlearning(pipe, site, targets: list[str], seeds: Sequence[int], config: SamplerConfig, params: dict[str, dict],
                        together: bool = False, progress=None, report_dir: Path | None = None,
                        base_images: torch.Tensor | None = None, done: dict[str, dict] | None = None) -> dict:
    """UA / IRA / CRA per target (and the base model's, as reference), means per kind, and fidelity on kept prompts.

    `site` is an `ablate.AblationSite`; `params[target]` holds the target's setting (the keys
    of `ablate.SETTING_DEFAULTS`). `base_images`, if given, are the base model's images of the answer set.
    `done` holds results of targets already evaluated with the same settings (they are
    not generated again); `progress(group, results)` is called after each group.
    """
    from .pipelines import resolve_sampler

    config = resolve_sampler(pipe, config)
    answers = full_answer_set(seeds)
    if base_images is None:
        base_images = generate_answer_set(pipe, answers, config)
    base = label_accuracy(base_images, answers)
    base_labels = base.pop("labels")
    if report_dir is not None:
        answer_set_grid(base_images, answers, report_dir / "base.png")
    groups = [list(targets)] if together else [[t] for t in targets]
    results: dict[str, dict] = {}
    for group in groups:
        if done and all(t in done for t in group):
            results.update({t: done[t] for t in group})
            continue
        images = ablated_answer_set(pipe, site, group, answers, config, params)
        labels = _labels_of(images)
        if report_dir is not None:
            answer_set_grid(images, answers, report_dir / f"ablated_{'+'.join(group).replace(':', '-')}.png")
        kept = [i for i, (s, o, _) in enumerate(answers.rows()) if f"style:{s}" not in group and f"object:{o}" not in group]
        fid = fidelity(base_images[kept], images[kept], [base_labels[i] for i in kept], [labels[i] for i in kept]) if kept else {}
        for t in group:
            results[t] = {**unlearning_metrics(t, answers, labels, erased=group), **params[t], "fidelity": fid,
                          "base": unlearning_metrics(t, answers, base_labels, erased=group)}
        if progress is not None:
            progress(group, results)
    mean = {}
    for kind in ("style", "object"):
        rows = [m for t, m in results.items() if t.startswith(kind)]
        if rows:
            mean[kind] = {k: float(np.mean([r[k] for r in rows])) for k in ("UA", "IRA", "CRA")}
    return {"targets": results, "mean": mean, "base": {"style_accuracy": base["style_accuracy"], "object_accuracy": base["object_accuracy"]},
            "config": {"seeds": list(seeds), "sampler": vars(config), "together": together, "hookpoint": site.hookpoint,
                       "selection": site.selection, "firing": site.firing}}


def markdown_report(results: dict) -> str:
    """A Markdown table of UA / IRA / CRA per target and the means."""
    lines = ["| target | UA | IRA | CRA | base UA / IRA / CRA | percentile | multiplier | dominance | changed labels (kept prompts) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for t, m in results["targets"].items():
        changed = m.get("fidelity", {}).get("changed_label_share", float("nan"))
        b = m.get("base", {})
        base = " / ".join(f"{b[k]:.1f}" for k in ("UA", "IRA", "CRA")) if b else ""
        lines.append(f"| {t} | {m['UA']:.1f} | {m['IRA']:.1f} | {m['CRA']:.1f} | {base} | {m['percentile']} | {m['multiplier']} | {m.get('dominance', 0.0)} | {changed:.1f}% |")
    for kind, m in results["mean"].items():
        lines.append(f"| **mean {kind}** | {m['UA']:.1f} | {m['IRA']:.1f} | {m['CRA']:.1f} | | | | | |")
    b = results["base"]
    lines.append("")
    lines.append(f"Base model: style accuracy {b['style_accuracy']:.1f}%, object accuracy {b['object_accuracy']:.1f}%.")
    return "\n".join(lines) + "\n"


def parse_target_spec(text: str) -> list[str]:
    """all-styles | all-objects | style:NAME,object:NAME,..."""
    from .ablate import parse_targets
    from .minicanvas.world import OBJECTS, STYLE_NAMES

    if text == "all-styles":
        return [f"style:{s}" for s in STYLE_NAMES]
    if text == "all-objects":
        return [f"object:{o}" for o in OBJECTS]
    return parse_targets(text)


def _grid_record(grid: dict) -> dict:
    """The grid as stored in tuned.json; an axis a record lacks was searched at its default alone."""
    return {k: [float(v) for v in grid.get(k, TUNING_GRID[k])] for k in TUNING_GRID}


# what a tuned.json record written before a setting existed was tuned with
_RECORD_DEFAULTS = {"selection": "saeuron", "firing": "mean", "grid": _grid_record(TUNING_GRID), "tie_break": "grid order"}


def _tuning_record(site, tune_seeds: Sequence[int], config: SamplerConfig, grid: dict) -> dict:
    """What tuned values depend on: tuning seeds, sampler, rules, grid searched and the concept scores (by content hash)."""
    import hashlib

    digest = hashlib.sha256((site.sae_dir / "concepts.h5").read_bytes()).hexdigest()[:16]
    return {"tune_seeds": sorted(int(s) for s in tune_seeds), "sampler": vars(config), "scores_sha256": digest,
            "selection": site.selection, "firing": site.firing, "grid": _grid_record(grid), "tie_break": TIE_BREAK}


# what a value of each grid axis must satisfy, and the error that says so
_GRID_RULES = {"percentile": (lambda v: 0 < v < 100, "percentiles must be in (0, 100)"),
               "multiplier": (lambda v: v < 0, "multipliers must be negative"),
               "dominance": (lambda v: v >= 0, "dominances must be >= 0 (0: no filter)")}


def parse_grid(percentiles: str | None, multipliers: str | None, dominances: str | None = None) -> dict:
    """The tuning grid from comma-separated lists ('99,99.5', '-5,-20', '0,2,3'); missing lists keep TUNING_GRID's."""
    from .errors import UserError

    grid = dict(TUNING_GRID)
    for key, text in (("percentile", percentiles), ("multiplier", multipliers), ("dominance", dominances)):
        if text is None:
            continue
        try:
            values = tuple(float(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise UserError(f"bad tuning {key} list {text!r}; give comma-separated numbers") from None
        valid, rule = _GRID_RULES[key]
        if not values or not all(valid(v) for v in values):
            raise UserError(f"bad tuning {key} list {text!r}: {rule}")
        grid[key] = values
    return grid


def run_evaluation(sae_dir: Path, targets: list[str], seeds: list[int], tune_seeds: list[int] | None, config: SamplerConfig,
                   together: bool, out: Path, report_dir: Path | None, pipe=None, base_images: torch.Tensor | None = None,
                   selection: str = "saeuron", fixed: dict | None = None, grid: dict = TUNING_GRID, firing: str = "mean") -> dict:
    """Tune (or reuse tuned values), evaluate, and write results JSON and the report (`base_images`: see evaluate_unlearning).

    Stored values are reused only when they were tuned on seeds disjoint from `seeds`, with
    the same sampler and the same concept scores; with `tune_seeds`, stale ones (or ones
    searched over another `grid`) are re-tuned. `fixed` (some keys of `ablate.SETTING_DEFAULTS`;
    None values are ignored) overrides stored values for every target, as SAeUron's fixed style setting.
    """
    import json

    from tqdm import tqdm

    from .ablate import SETTING_DEFAULTS, TUNED_FILE, load_ablation_site
    from .errors import UserError
    from .pipelines import load_pipeline, resolve_sampler

    fixed = {k: v for k, v in (fixed or {}).items() if v is not None}
    if tune_seeds and fixed:
        raise UserError(f"both tuning seeds {list(tune_seeds)} and a fixed {fixed} were given; tune or fix, not both")
    if tune_seeds and set(tune_seeds) & set(seeds):
        raise UserError(f"tuning seeds {sorted(set(tune_seeds) & set(seeds))} are also evaluation seeds; they must be disjoint")
    pipe = pipe or load_pipeline()
    config = resolve_sampler(pipe, config)  # results and tuned values record the CFG scale actually used
    site = load_ablation_site(sae_dir, pipe, selection, firing)
    for t in targets:
        site.scores.index(t)  # unknown concept: a clear error before any generation
    if site.scores.seeds is not None and set(site.scores.seeds.tolist()) & set(seeds):
        import warnings

        shared = sorted(set(site.scores.seeds.tolist()) & set(seeds))
        warnings.warn(f"evaluation seeds {shared} were also used to compute the concept scores; the evaluation images "
                      f"repeat images the features were selected on", stacklevel=2)
    tuned, current = site.tuned, _tuning_record(site, tune_seeds or [], config, grid)
    def recorded(stored: dict) -> dict:  # what a stored record was tuned with, written in today's format
        record = {k: stored.get(k, _RECORD_DEFAULTS.get(k)) for k in current}
        return {**record, "grid": _grid_record(record["grid"])}

    for t in tqdm(targets, desc="tuning", disable=not tune_seeds):
        if tune_seeds and recorded(tuned.get(t, {})) != current:
            tuned[t] = {**tune_target(pipe, site, t, tune_seeds, config, grid), **current}
            (sae_dir / TUNED_FILE).write_text(json.dumps(tuned, indent=1))
    uses_stored = set(fixed) != set(SETTING_DEFAULTS)  # a fully fixed setting ignores tuned.json
    for t in (t for t in targets if t in tuned and uses_stored):
        stored = tuned[t]
        if set(stored.get("tune_seeds", [])) & set(seeds):
            raise UserError(f"{t}'s stored values in {TUNED_FILE} were tuned on seeds {stored['tune_seeds']}, which overlap the "
                            f"evaluation seeds; re-tune with --tune-seeds disjoint from --seeds")
        if any(stored.get(k) not in (None, current[k]) for k in ("sampler", "scores_sha256")) or \
                any(stored.get(k, _RECORD_DEFAULTS[k]) != current[k] for k in ("selection", "firing")):
            raise UserError(f"{t}'s stored values in {TUNED_FILE} were tuned with other sampler settings, concept scores or "
                            f"feature selection (--selection, --firing) than now; re-tune with --tune-seeds")
    params = {t: site.params(t, **fixed) for t in targets}
    # finished targets go to a side file as they come, so an interrupted evaluation resumes
    partial_path = out.with_name(out.name + ".partial")
    key = {"seeds": list(seeds), "sampler": vars(config), "together": together, "params": params,
           "scores_sha256": current["scores_sha256"], "selection": site.selection, "firing": site.firing}
    partial = json.loads(partial_path.read_text()) if partial_path.exists() else {}
    done = partial.get("targets", {}) if partial.get("key") == json.loads(json.dumps(key)) else {}
    bar = tqdm(total=1 if together else len(targets), desc="evaluating", initial=0 if together else sum(t in done for t in targets))

    def save_progress(group, results):
        bar.update(1)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = partial_path.with_name(partial_path.name + ".tmp")
        tmp.write_text(json.dumps({"key": key, "targets": results}, indent=1))
        tmp.replace(partial_path)

    results = evaluate_unlearning(pipe, site, targets, seeds, config, params, together, progress=save_progress,
                                  report_dir=report_dir, base_images=base_images, done=done)
    bar.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    partial_path.unlink(missing_ok=True)
    if report_dir is not None:
        (report_dir / "report.md").write_text(markdown_report(results))
    return results


def _cmd_evaluate(args) -> None:
    from .cli_args import parse_seeds, sampler_from_args

    results = run_evaluation(Path(args.sae), parse_target_spec(args.targets), parse_seeds(args.seeds),
                             parse_seeds(args.tune_seeds) if args.tune_seeds else None, sampler_from_args(args),
                             args.together, Path(args.out), Path(args.report) if args.report else None,
                             selection=args.selection, firing=args.firing,
                             fixed={"multiplier": args.multiplier, "percentile": args.percentile, "dominance": args.dominance},
                             grid=parse_grid(args.tune_percentiles, args.tune_multipliers, args.tune_dominances))
    print(markdown_report(results))


def register_cli(sub) -> None:
    """Add `evaluate`."""
    from .cli import command_help

    from .ablate import add_rule_args
    from .cli_args import add_sampler_args

    p = sub.add_parser("evaluate", help=command_help("evaluate"))
    p.add_argument("--sae", required=True, help="SAE folder with concepts.h5")
    p.add_argument("--targets", required=True, help="all-styles | all-objects | style:NAME,object:NAME,...")
    p.add_argument("--seeds", default="0-1", help="evaluation seeds (default 0-1)")
    p.add_argument("--tune-seeds", default=None, help="tuning seeds, disjoint from --seeds (default: reuse stored values)")
    p.add_argument("--multiplier", type=float, help="fixed multiplier for every target (instead of stored or tuned values)")
    p.add_argument("--percentile", type=float, help="fixed selection percentile for every target")
    p.add_argument("--tune-percentiles", help=f"percentiles to search with --tune-seeds (default {','.join(map(str, TUNING_GRID['percentile']))})")
    p.add_argument("--tune-multipliers", help=f"multipliers to search with --tune-seeds (default {','.join(map(str, TUNING_GRID['multiplier']))})")
    p.add_argument("--dominance", type=float, help="fixed minimum dominance for every target: keep only features the target fires at "
                                                   "least this many times as strongly as any other concept (0: no filter, SAeUron)")
    p.add_argument("--tune-dominances", help="minimum dominances to search with --tune-seeds (default 0: SAeUron's selection alone)")
    p.add_argument("--together", action="store_true", help="erase all targets at once")
    p.add_argument("--out", required=True, help="results JSON")
    p.add_argument("--report", help="folder for report.md and PNG grids")
    add_rule_args(p)
    add_sampler_args(p)
    p.set_defaults(func=_cmd_evaluate)
