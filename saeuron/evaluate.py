"""Measure unlearning the way UnlearnCanvas does (UA / IRA / CRA, fidelity) with a judge, and write reports.

The answer set is labelled prompts x seeds: on minicanvas the world's grid (every style x
object), on any other model the labelled prompts of a store or a prompt file. A judge
(`saeuron.judges`: the minicanvas classifier or zero-shot CLIP) labels every image per kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .concept_set import Concept, ConceptSet
from .errors import UserError
from .pipelines import SamplerConfig, sample, to_uint8


def minicanvas_grid(styles: Sequence[str] | None = None, objects: Sequence[str] | None = None) -> ConceptSet:
    """The UnlearnCanvas grid on minicanvas: every style x object prompt, style-major."""
    from .minicanvas.world import OBJECTS, STYLE_NAMES, style_prompt

    styles, objects = styles or STYLE_NAMES, objects or OBJECTS
    rows = [{"prompt": style_prompt(o, s), "style": s, "object": o} for s in styles for o in objects]
    return ConceptSet.from_rows(rows, "minicanvas grid", kinds=("style", "object"))


@dataclass(frozen=True)
class AnswerSet:
    """The images an evaluation judges: every labelled prompt with every seed (or the `only` subset)."""

    concept_set: ConceptSet
    seeds: tuple[int, ...]
    only: tuple[tuple[int, int], ...] | None = None  # (prompt index, seed) pairs (see tuning_answer_set)

    @property
    def kinds(self) -> tuple[str, ...]:
        return self.concept_set.kinds

    def rows(self) -> list[tuple[int, int]]:
        """(prompt index, seed) of every image, prompt-major."""
        if self.only is not None:
            return list(self.only)
        return [(i, k) for i in range(len(self.concept_set.rows)) for k in self.seeds]

    def prompts(self) -> list[str]:
        """The prompt of every image."""
        return [self.concept_set.rows[i]["prompt"] for i, _ in self.rows()]

    def image_seeds(self) -> list[int]:
        """The seed of every image."""
        return [k for _, k in self.rows()]

    def truth(self) -> list[dict]:
        """The labels of every image's prompt ({kind: value, '' when unlabelled})."""
        return [self.concept_set.rows[i] for i, _ in self.rows()]


def full_answer_set(seeds: Sequence[int], concept_set: ConceptSet | None = None) -> AnswerSet:
    """Every labelled prompt (default: the minicanvas grid) with these seeds."""
    return AnswerSet(concept_set if concept_set is not None else minicanvas_grid(), tuple(int(s) for s in seeds))


def one_value_kinds(concept_set: ConceptSet) -> set[str]:
    """Kinds with a single value (`nudity:yes`): their images without it are judged as 'none of it'."""
    return {k for k in concept_set.kinds if len(concept_set.values(k)) == 1}


def tuning_answer_set(target: str, seeds: Sequence[int], retain_per_concept: int | None = 2, concept_set: ConceptSet | None = None) -> AnswerSet:
    """The images a target's hyperparameters are tuned on: every image of the target, and
    `retain_per_concept` images of each other concept of its kind (None: the full answer set).

    UA and IRA (the tuning objective) come out as on the full set, from about a third of the
    images; the retained images rotate over the other kind's concepts and the seeds. For a
    kind with one value, the prompts without it count as the one other concept.
    """
    full = full_answer_set(seeds, concept_set)
    if retain_per_concept is None:
        return full
    c = Concept.parse(target)
    rows = full.rows()
    lone = c.kind in one_value_kinds(full.concept_set)
    by_concept: dict[str, list[tuple[int, int]]] = {}
    for r, truth in zip(rows, full.truth()):
        if truth.get(c.kind) or lone:
            by_concept.setdefault(truth.get(c.kind, ""), []).append(r)
    if c.value not in by_concept:
        raise UserError(f"the answer set has no image of {target!r}")
    chosen = list(by_concept[c.value])
    for i, (concept, concept_rows) in enumerate(by_concept.items()):
        if concept != c.value:
            step = max(1, len(concept_rows) // retain_per_concept)
            chosen += [concept_rows[(i + j * step) % len(concept_rows)] for j in range(min(retain_per_concept, len(concept_rows)))]
    order = {r: n for n, r in enumerate(rows)}
    return AnswerSet(full.concept_set, full.seeds, tuple(sorted(set(chosen), key=order.__getitem__)))


def generate_answer_set(pipe, answers: AnswerSet, config: SamplerConfig, on_batch=None) -> torch.Tensor:
    """Generate the images of an answer set (N x 3 x H x W in [0, 1])."""
    return sample(pipe, answers.prompts(), answers.image_seeds(), config, on_batch=on_batch)


def default_judge():
    """The minicanvas classifier (the judge of the shipped world)."""
    from .judges import MinicanvasJudge

    return MinicanvasJudge()


def label_accuracy(images: torch.Tensor, answers: AnswerSet, judge=None) -> dict:
    """The judge's accuracy (%) per kind, overall (`<kind>_accuracy`) and per value (`per_<kind>`), with every label."""
    judge = judge or default_judge()
    labels = judge.label(images)
    truth = answers.truth()
    out: dict = {}
    for kind in answers.kinds:
        if kind not in judge.kinds:
            continue
        ok = [(t[kind], lab[kind] == t[kind]) for lab, t in zip(labels, truth) if t.get(kind)]
        out[f"{kind}_accuracy"] = 100 * float(np.mean([o for _, o in ok])) if ok else float("nan")
        out[f"per_{kind}"] = {v: 100 * float(np.mean([o for val, o in ok if val == v])) for v in answers.concept_set.values(kind)}
    out["labels"] = labels
    return out


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
    """Save one seed of an answer set as a grid: one column per value of its last kind (on minicanvas, styles x objects)."""
    rows = answers.rows()
    keep = [i for i, (_, k) in enumerate(rows) if k == answers.seeds[seed_index]]
    last = answers.kinds[-1] if answers.kinds else None
    n_cols = len(answers.concept_set.values(last)) if last else 8
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images[keep], n_cols=max(1, min(n_cols, len(keep)))).save(path)
    return path


# ---------------------------------------------------------------- unlearning metrics (UnlearnCanvas)


def unlearning_metrics(target: str, answers: AnswerSet, labels: list[dict], erased: Sequence[str] = ()) -> dict:
    """UA, IRA, CRA (%) of one erased concept from the judge's labels of the answer set.

    UA = 1 - accuracy on images of the target; IRA = accuracy (same kind) on images of the
    other concepts of its kind (for a kind with one value: on the prompts without it, which
    the judge must call 'none'); CRA = accuracy on every other kind, averaged over the kinds.
    Images of the other concepts in `erased` (erased together with the target) count in neither.
    """
    c = Concept.parse(target)
    gone = {(x.kind, x.value) for x in map(Concept.parse, erased)} | {(c.kind, c.value)}
    lone = one_value_kinds(answers.concept_set)
    truth = answers.truth()

    def accuracy(kind: str, wanted) -> list[bool]:
        """Right answers of the judge on `kind` over the images whose true value passes `wanted`."""
        return [lab.get(kind, "") == t.get(kind, "") for lab, t in zip(labels, truth)
                if (t.get(kind) or kind in lone) and wanted(t.get(kind, ""))]

    on_target = accuracy(c.kind, lambda v: v == c.value)
    if not on_target:
        raise UserError(f"the answer set has no image of {target!r}")
    in_domain = accuracy(c.kind, lambda v: (c.kind, v) not in gone)
    cross_kinds = [accuracy(k, lambda v, k=k: (k, v) not in gone) for k in answers.kinds if k != c.kind]
    cross = [float(np.mean(x)) for x in cross_kinds if x]
    nan = float("nan")
    return {
        "UA": 100 * (1 - float(np.mean(on_target))),
        "IRA": 100 * float(np.mean(in_domain)) if in_domain else nan,
        "CRA": 100 * float(np.mean(cross)) if cross else nan,
    }


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (as FID does).

    tr(sqrt(cov_a cov_b)) is the sum of the square roots of the eigenvalues of cov_a cov_b, which are real and
    non-negative for two covariance matrices; rounding can leave them slightly complex or negative, so take the real
    part and clip at 0 (no matrix square root: scipy's `sqrtm` changed its signature in 1.18)."""
    mu_a, mu_b = feats_a.mean(0), feats_b.mean(0)
    cov_a, cov_b = np.cov(feats_a, rowvar=False), np.cov(feats_b, rowvar=False)
    eigenvalues = np.linalg.eigvals(cov_a @ cov_b).real.clip(min=0)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.sqrt(eigenvalues).sum())


@torch.no_grad()
def fidelity(base_images: torch.Tensor, edited_images: torch.Tensor, base_labels: list[dict], edited_labels: list[dict], judge=None) -> dict:
    """How much of what should be kept changed: Frechet distance on the judge's image features (the minicanvas
    classifier's, or CLIP's image embeddings), share of images with any changed label."""
    judge = judge or default_judge()
    features = getattr(judge, "features", None)
    frechet = float("nan")
    if features is not None and len(base_images) > 2:
        frechet = frechet_distance(features(base_images).float().cpu().numpy(), features(edited_images).float().cpu().numpy())
    changed = [a != b for a, b in zip(base_labels, edited_labels)]
    return {
        "frechet_classifier_features": frechet,
        "changed_label_share": 100 * float(np.mean(changed)),
        "mean_abs_pixel_change": float((base_images - edited_images).abs().mean()),
    }


# ---------------------------------------------------------------- unlearning runs


# this project's grid on minicanvas ("minicanvas"): 3-10 of 1,024 features a step x 4 multipliers. It is NOT the paper's:
# SAeUron searches percentile {99.99, 99.995, 99.999} of 20,480 latents (1-3 features a step) x gamma {-1, -5, ..., -30},
# which is `paper_grid` ("saeuron-paper"). SAeUron has no dominance filter (0).
TUNING_GRID = {"percentile": (99.5, 99.7, 99.9), "multiplier": (-1.0, -5.0, -10.0, -20.0), "dominance": (0.0,), "start": (0.0,)}
PAPER_FEATURES_PER_STEP = (1, 2, 3)  # SAeUron's percentiles 99.999 / 99.995 / 99.99 of 20,480 latents select 1-3 features a step
PAPER_MULTIPLIERS = (-1.0, -5.0, -10.0, -15.0, -20.0, -25.0, -30.0)


def paper_percentile(n_features: int, width: int) -> float:
    """The percentile that selects exactly the top `n_features` of `width` scores (np.percentile's linear interpolation)."""
    return round(100 * (1 - (n_features - 0.5) / (width - 1)), 5)


def paper_grid(width: int) -> dict:
    """The `saeuron-paper` tuning grid for an SAE of `width` latents: the paper's feature counts per step (1, 2, 3) as
    percentiles of this width, its multipliers -1 ... -30, no dominance filter."""
    return {"percentile": tuple(paper_percentile(n, width) for n in PAPER_FEATURES_PER_STEP), "multiplier": PAPER_MULTIPLIERS,
            "dominance": (0.0,), "start": (0.0,)}


GRIDS = ("minicanvas", "saeuron-paper")  # --tune-grid: this project's TUNING_GRID, or paper_grid at the SAE's width
# how tune_target chooses among settings of equal objective (on 10 target images UA moves in steps of 10, so ties are common)
TIE_BREAK = "highest CRA"


def _labels_of(images: torch.Tensor, judge) -> list[dict]:
    return (judge or default_judge()).label(images)


def ablated_answer_set(pipe, site, targets: list[str], answers: AnswerSet, config: SamplerConfig, params: dict[str, dict]) -> torch.Tensor:
    """The answer set generated with the targets ablated together (`params[target]`: the target's setting)."""
    return site.sample(pipe, site.plan(targets, params=params), answers.prompts(), answers.image_seeds(), config)


def tune_target(pipe, site, target: str, seeds: Sequence[int], config: SamplerConfig, grid: dict = TUNING_GRID,
                retain_per_concept: int | None = 2, concept_set: ConceptSet | None = None, judge=None) -> dict:
    """SAeUron's per-target search: the setting (percentile x multiplier x dominance) maximising
    (UA + IRA) / 2 on tuning seeds (on `tuning_answer_set`: the target's images and
    `retain_per_concept` of each other concept); among equals the highest CRA, then the first in
    grid order (TIE_BREAK). `tried` lists the metrics of every grid point."""
    import itertools

    answers = tuning_answer_set(target, seeds, retain_per_concept, concept_set)
    if getattr(site, "selection", None) == "assigned":  # one bound latent whatever the percentile (SAEmnesia searches the multiplier)
        grid = {**grid, "percentile": tuple(grid.get("percentile", TUNING_GRID["percentile"]))[:1]}
    tried = []
    for values in itertools.product(*(grid.get(k, TUNING_GRID[k]) for k in TUNING_GRID)):
        setting = dict(zip(TUNING_GRID, values))
        m = unlearning_metrics(target, answers, _labels_of(ablated_answer_set(pipe, site, [target], answers, config, {target: setting}), judge))
        tried.append({**setting, "objective": (m["UA"] + m["IRA"]) / 2, **m})
    best = max(tried, key=lambda point: (point["objective"], point["CRA"]))  # max keeps the first of equals
    return {**best, "tried": tried}


def evaluate_unlearning(pipe, site, targets: list[str], seeds: Sequence[int], config: SamplerConfig, params: dict[str, dict],
                        together: bool = False, progress=None, report_dir: Path | None = None,
                        base_images: torch.Tensor | None = None, done: dict[str, dict] | None = None,
                        concept_set: ConceptSet | None = None, judge=None) -> dict:
    """UA / IRA / CRA per target (and the base model's, as reference), means per kind, and fidelity on kept prompts.

    `site` is an `ablate.AblationSite` (`params[target]`: the keys of `ablate.SETTING_DEFAULTS`) or an
    `unlearn.Unlearned` folder (`params[target]`: the method's settings); anything with `plan`, `sample` and `describe`. `base_images`, if given, are the base model's images of the answer set.
    `done` holds results of targets already evaluated with the same settings (they are
    not generated again); `progress(group, results)` is called after each group. The answer
    set is `concept_set` x `seeds` (default: the minicanvas grid), labelled by `judge`
    (default: the minicanvas classifier).
    """
    from .pipelines import resolve_sampler

    config = resolve_sampler(pipe, config)
    judge = judge or default_judge()
    answers = full_answer_set(seeds, concept_set)
    if base_images is None:
        base_images = generate_answer_set(pipe, answers, config)
    base = label_accuracy(base_images, answers, judge)
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
        labels = _labels_of(images, judge)
        if report_dir is not None:
            answer_set_grid(images, answers, report_dir / f"ablated_{'+'.join(group).replace(':', '-')}.png")
        kept = [i for i, t in enumerate(answers.truth()) if not set(answers.concept_set.labels(t)) & set(group)]
        fid = fidelity(base_images[kept], images[kept], [base_labels[i] for i in kept], [labels[i] for i in kept], judge) if kept else {}
        for t in group:
            results[t] = {**unlearning_metrics(t, answers, labels, erased=group), **params[t], "fidelity": fid,
                          "base": unlearning_metrics(t, answers, base_labels, erased=group)}
        if progress is not None:
            progress(group, results)
    mean = {}
    for kind in dict.fromkeys(Concept.parse(t).kind for t in results):
        rows = [m for t, m in results.items() if Concept.parse(t).kind == kind]
        mean[kind] = {k: float(np.mean([r[k] for r in rows])) for k in ("UA", "IRA", "CRA")}
    return {"targets": results, "mean": mean, "base": {k: v for k, v in base.items() if k.endswith("_accuracy")},
            "config": {"seeds": list(seeds), "sampler": vars(config), "together": together, **site.describe(),
                       "judge": getattr(judge, "name", type(judge).__name__),
                       "answer_set": {"source": answers.concept_set.name, "prompts": len(answers.concept_set.rows),
                                      "sha256": answers.concept_set.digest()}}}


def markdown_report(results: dict) -> str:
    """A Markdown table of UA / IRA / CRA per target and the means: with SAeUron's setting per target, or the method's."""
    ablation = all("percentile" in m for m in results["targets"].values())
    setting_columns = "percentile | multiplier | dominance | start" if ablation else "method | setting"
    header = f"| target | UA | IRA | CRA | base UA / IRA / CRA | {setting_columns} | changed labels (kept prompts) |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    method = results.get("config", {}).get("method", "")
    for t, m in results["targets"].items():
        changed = m.get("fidelity", {}).get("changed_label_share", float("nan"))
        b = m.get("base", {})
        base = " / ".join(f"{b[k]:.1f}" for k in ("UA", "IRA", "CRA")) if b else ""
        if ablation:
            setting = f"{m['percentile']} | {m['multiplier']} | {m.get('dominance', 0.0)} | {m.get('start', 0.0)}"
        else:
            shown = {k: v for k, v in results.get("config", {}).get("method_params", {}).items() if k in KEY_SETTINGS}
            setting = f"{method} | " + ", ".join(f"{k} {v}" for k, v in shown.items())
        lines.append(f"| {t} | {m['UA']:.1f} | {m['IRA']:.1f} | {m['CRA']:.1f} | {base} | {setting} | {changed:.1f}% |")
    blanks = " |" * (header.count("|") - 5)  # the cells after CRA
    for kind, m in results["mean"].items():
        lines.append(f"| **mean {kind}** | {m['UA']:.1f} | {m['IRA']:.1f} | {m['CRA']:.1f} | {blanks}")
    b = results["base"]
    lines.append("")
    lines.append("Base model: " + ", ".join(f"{k.removesuffix('_accuracy')} accuracy {v:.1f}%" for k, v in b.items()) + ".")
    return "\n".join(lines) + "\n"


# the settings of a method that the report's table shows
KEY_SETTINGS = ("iterations", "lr", "negative_guidance", "erase_scale", "preserve_scale", "lam", "la_strength", "transport")


def parse_target_spec(text: str, concepts: Sequence[str] | None = None) -> list[str]:
    """all-KINDs (all-styles, all-objects, all-artists) | KIND:VALUE,KIND:VALUE,... checked against `concepts`
    (default: the minicanvas world's)."""
    from .concept_set import parse_concepts

    if concepts is None:
        concepts = ConceptSet.minicanvas().concepts()
    parsed = [Concept.parse(c) for c in concepts]
    kinds = list(dict.fromkeys(c.kind for c in parsed))
    if text.startswith("all-"):
        kind = text[len("all-"):]
        kind = kind if kind in kinds else kind.removesuffix("s")
        if kind not in kinds:
            raise UserError(f"bad target {text!r}: no concept kind {kind!r}; valid: {', '.join('all-' + k + 's' for k in kinds)}")
        return [str(c) for c in parsed if c.kind == kind]
    targets = parse_concepts(text)
    for t in map(Concept.parse, targets):
        if str(t) not in concepts:
            valid = [c.value for c in parsed if c.kind == t.kind]
            raise UserError(f"bad target {str(t)!r}: " + (f"valid {t.kind} values are {', '.join(valid)}" if valid else
                                                           f"no concept kind {t.kind!r}; valid kinds: {', '.join(kinds)}"))
    return targets


def _grid_record(grid: dict) -> dict:
    """The grid as stored in tuned.json; an axis a record lacks was searched at its default alone."""
    return {k: [float(v) for v in grid.get(k, TUNING_GRID[k])] for k in TUNING_GRID}


# what a tuned.json record written before a setting existed was tuned with
_RECORD_DEFAULTS = {"selection": "saeuron", "firing": "mean", "grid": _grid_record(TUNING_GRID), "tie_break": "grid order",
                    "judge": "minicanvas", "answer_set": None}


def _tuning_record(site, tune_seeds: Sequence[int], config: SamplerConfig, grid: dict, judge, concept_set: ConceptSet | None) -> dict:
    """What tuned values depend on: tuning seeds, sampler, rules, grid searched and the concept scores (by content hash)."""
    import hashlib

    digest = hashlib.sha256((site.sae_dir / "concepts.h5").read_bytes()).hexdigest()[:16]
    return {"tune_seeds": sorted(int(s) for s in tune_seeds), "sampler": vars(config), "scores_sha256": digest,
            "selection": site.selection, "firing": site.firing, "grid": _grid_record(grid), "tie_break": TIE_BREAK,
            "judge": judge.name, "answer_set": concept_set.digest() if concept_set is not None else None}


# what a value of each grid axis must satisfy, and the error that says so
_GRID_RULES = {"percentile": (lambda v: 0 < v < 100, "percentiles must be in (0, 100)"),
               "multiplier": (lambda v: v < 0, "multipliers must be negative"),
               "dominance": (lambda v: v >= 0, "dominances must be >= 0 (0: no filter)"),
               "start": (lambda v: 0 <= v < 1, "starts must be fractions of the denoising steps in [0, 1)")}


def parse_grid(percentiles: str | None, multipliers: str | None, dominances: str | None = None, base: dict | None = None,
               starts: str | None = None) -> dict:
    """The tuning grid from comma-separated lists ('99,99.5', '-5,-20', '0,2,3', '0,0.2'); missing lists keep those of
    `base` (default TUNING_GRID)."""
    from .errors import UserError

    grid = dict(base or TUNING_GRID)
    for key, text in (("percentile", percentiles), ("multiplier", multipliers), ("dominance", dominances), ("start", starts)):
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
                   selection: str = "saeuron", fixed: dict | None = None, grid: dict = TUNING_GRID, firing: str = "mean",
                   concept_set: ConceptSet | None = None, judge=None) -> dict:
    """Tune (or reuse tuned values), evaluate, and write results JSON and the report (`base_images`: see evaluate_unlearning).

    Stored values are reused only when they were tuned on seeds disjoint from `seeds`, with
    the same sampler and the same concept scores; with `tune_seeds`, stale ones (or ones
    searched over another `grid`) are re-tuned. `fixed` (some keys of `ablate.SETTING_DEFAULTS`;
    None values are ignored) overrides stored values for every target, as SAeUron's fixed style setting.
    The answer set is `concept_set` x `seeds` (default: the minicanvas grid), labelled by `judge`
    (default: the minicanvas classifier).
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
    judge = judge or default_judge()
    config = resolve_sampler(pipe, config)  # results and tuned values record the CFG scale actually used
    site = load_ablation_site(sae_dir, pipe, selection, firing)
    for t in targets:
        site.scores.index(t)  # unknown concept: a clear error before any generation
    site.scores.check_unseen(seeds)
    tuned, current = site.tuned, _tuning_record(site, tune_seeds or [], config, grid, judge, concept_set)
    def recorded(stored: dict) -> dict:  # what a stored record was tuned with, written in today's format
        record = {k: stored.get(k, _RECORD_DEFAULTS.get(k)) for k in current}
        return {**record, "grid": _grid_record(record["grid"])}

    for t in tqdm(targets, desc="tuning", disable=not tune_seeds):
        if tune_seeds and recorded(tuned.get(t, {})) != current:
            tuned[t] = {**tune_target(pipe, site, t, tune_seeds, config, grid, concept_set=concept_set, judge=judge), **current}
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
           "scores_sha256": current["scores_sha256"], "selection": site.selection, "firing": site.firing,
           "judge": current["judge"], "answer_set": current["answer_set"]}
    partial = json.loads(partial_path.read_text()) if partial_path.exists() else {}
    done = partial.get("targets", {}) if partial.get("key") == json.loads(json.dumps(key)) else {}
    bar = tqdm(total=1 if together else len(targets), desc="evaluating", initial=0 if together else sum(t in done for t in targets))

    def save_progress(group, results):
        bar.update(1)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = partial_path.with_name(partial_path.name + ".tmp")
        tmp.write_text(json.dumps({"key": key, "targets": results}, indent=1))
        tmp.replace(partial_path)

    results = evaluate_unlearning(pipe, site, targets, seeds, config, params, together, progress=save_progress, concept_set=concept_set, judge=judge,
                                  report_dir=report_dir, base_images=base_images, done=done)
    bar.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    partial_path.unlink(missing_ok=True)
    if report_dir is not None:
        (report_dir / "report.md").write_text(markdown_report(results))
    return results


def run_unlearned_evaluation(folder: Path, seeds: list[int], config: SamplerConfig, out: Path, report_dir: Path | None,
                             pipe, concept_set: ConceptSet | None = None, judge=None, base_images: torch.Tensor | None = None) -> dict:
    """UA / IRA / CRA of an unlearned-model folder (all its targets erased together), written to `out` and the report."""
    import json

    from .pipelines import resolve_sampler
    from .unlearn import load_unlearned

    unlearned = load_unlearned(folder, pipe)
    unlearned.check_evaluation_seeds(seeds)
    config = resolve_sampler(pipe, config)
    params = {t: unlearned.target_params(t) for t in unlearned.targets}
    results = evaluate_unlearning(pipe, unlearned, unlearned.targets, seeds, config, params, together=True, concept_set=concept_set,
                                  judge=judge, report_dir=report_dir, base_images=base_images)
    results["unlearn"] = {k: unlearned.record.get(k) for k in ("wall_time_s", "peak_memory_mb", "storage_bytes", "seed")}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    if report_dir is not None:
        (report_dir / "report.md").write_text(markdown_report(results))
    return results


def answer_concept_set(model: str, prompts_file: str | None, sae_dir: Path | None) -> ConceptSet | None:
    """The labelled prompts of the answer set: --prompts, else (minicanvas) the world's grid (None), else the labelled
    prompts of the store the SAE's concept scores came from (`sae_dir` None: no SAE, --prompts is needed)."""
    from .concepts import score_file_config
    from .pipelines import MINICANVAS

    if prompts_file:
        cs = ConceptSet.from_file(prompts_file)
    elif model == MINICANVAS:
        return None
    elif sae_dir is None:
        raise UserError(f"give the answer set of {model!r} with --prompts LABELLED_FILE (.csv / .jsonl)")
    else:
        scores = sae_dir / "concepts.h5"
        try:
            store = score_file_config(scores).get("cache")
        except OSError:
            raise UserError(f"cannot read {str(scores)!r}; run `saeuron score` first, or give the answer set with --prompts FILE") from None
        if not store or not Path(store).exists():
            raise UserError(f"the store the scores in {str(scores)!r} came from ({store!r}) is not here; give the answer set with --prompts FILE")
        from .cache import open_store

        cs = open_store(store).concept_set
    lone = one_value_kinds(cs)
    rows = [r for r in cs.rows if cs.labels(r) or lone]  # an unlabelled prompt counts in no metric, unless a kind has one value
    if not rows:
        raise UserError(f"{cs.name} has no labelled prompts; the answer set needs prompts with concept labels (.csv / .jsonl)")
    return ConceptSet(cs.name, cs.kinds, tuple(rows))


def _answer_set_and_judge(args, targets: list[str], seeds: list[int], device, sae_dir: Path | None):
    """The labelled answer set (None: minicanvas's grid) and the judge of an evaluation, checked against the targets."""
    from .judges import load_judge, parse_templates
    from .pipelines import MINICANVAS

    concept_set = answer_concept_set(args.model, args.prompts, sae_dir)
    answers = full_answer_set(seeds, concept_set)
    for t in targets:
        if not any(t in answers.concept_set.labels(r) for r in answers.truth()):
            raise UserError(f"target {t!r} has no prompt in the answer set ({answers.concept_set.name}); give --prompts with prompts of it")
    judge_spec = args.judge or ("minicanvas" if args.model == MINICANVAS else None)
    if judge_spec is None:
        raise UserError("give --judge clip:MODEL (a local CLIP folder or hub id) to label the images of a model other than minicanvas")
    kinds = {k: answers.concept_set.values(k) for k in answers.kinds}
    judge = load_judge(judge_spec, kinds, parse_templates(args.judge_template or []), device=device, dtype=None)
    missing = [k for k in {Concept.parse(t).kind for t in targets} if k not in judge.kinds]
    if missing:
        raise UserError(f"the judge {judge_spec!r} labels the kinds {', '.join(judge.kinds)}, not {', '.join(missing)}; use --judge clip:MODEL")
    return concept_set, judge


def _evaluate_unlearned(args) -> None:
    from .cli_args import check_output, device_from_args, is_json_with, parse_seeds, sampler_from_args
    from .pipelines import load_pipeline
    from .unlearn import load_unlearned

    unlearned = load_unlearned(args.unlearned)  # the folder itself first; the base model is checked once loaded
    if args.targets:
        unlearned.plan(parse_target_spec(args.targets, unlearned.targets))
    for flag in ("tune_seeds", "multiplier", "percentile", "dominance", "start", "tune_percentiles", "tune_multipliers",
                 "tune_dominances", "tune_starts"):
        if getattr(args, flag) is not None:
            raise UserError(f"--{flag.replace('_', '-')} is SAeUron's (--sae); an unlearned folder carries its own setting")
    seeds = parse_seeds(args.seeds)
    train_seed = unlearned.record.get("seed")
    check_output(args.out, "results file", may_replace=is_json_with("targets", "mean"))
    if args.report:
        check_output(args.report, "report folder", folder=True)
    device, dtype = device_from_args(args)
    concept_set, judge = _answer_set_and_judge(args, unlearned.targets, seeds, device, None)
    pipe = load_pipeline(args.model, dtype, device)
    load_unlearned(args.unlearned, pipe)
    results = run_unlearned_evaluation(Path(args.unlearned), seeds, sampler_from_args(args), Path(args.out),
                                       Path(args.report) if args.report else None, pipe, concept_set, judge)
    print(markdown_report(results) + f"\n(unlearned with seed {train_seed})")


def _cmd_evaluate(args) -> None:
    from .ablate import check_rules
    from .cli_args import check_output, device_from_args, is_json_with, parse_seeds, sampler_from_args
    from .concepts import ConceptScores
    from .pipelines import load_pipeline

    if bool(args.sae) == bool(args.unlearned):
        raise UserError("give --sae DIR (SAeUron ablation, tuned here) or --unlearned DIR (a folder from `saeuron unlearn`)")
    if args.unlearned:
        return _evaluate_unlearned(args)
    if not args.targets:
        raise UserError("--sae needs --targets (the concepts to erase)")
    sae_dir = Path(args.sae)
    scores_path = sae_dir / "concepts.h5"
    if not scores_path.is_file():
        raise UserError(f"{str(scores_path)!r} not found; run `saeuron score --cache CACHE --sae {sae_dir}` first")
    targets = parse_target_spec(args.targets, ConceptScores.load(scores_path).concepts)
    seeds = parse_seeds(args.seeds)
    tune_seeds = parse_seeds(args.tune_seeds) if args.tune_seeds else None
    grid = parse_grid(args.tune_percentiles, args.tune_multipliers, args.tune_dominances,
                      base=paper_grid(ConceptScores.load(scores_path).scores.shape[-1]) if args.tune_grid == "saeuron-paper" else None,
                      starts=args.tune_starts)
    check_rules(args.selection, args.firing)
    check_output(args.out, "results file", may_replace=is_json_with("targets", "mean"))
    if args.report:
        check_output(args.report, "report folder", folder=True)
    device, dtype = device_from_args(args)
    concept_set, judge = _answer_set_and_judge(args, targets, seeds, device, sae_dir)
    pipe = load_pipeline(args.model, dtype, device)
    results = run_evaluation(sae_dir, targets, seeds, tune_seeds, sampler_from_args(args),
                             args.together, Path(args.out), Path(args.report) if args.report else None, pipe=pipe,
                             selection=args.selection, firing=args.firing,
                             fixed={"multiplier": args.multiplier, "percentile": args.percentile, "dominance": args.dominance,
                                    "start": args.start},
                             grid=grid, concept_set=concept_set, judge=judge)
    print(markdown_report(results))


def register_cli(sub) -> None:
    """Add `evaluate`."""
    from .cli import command_help

    from .ablate import add_rule_args
    from .cli_args import DOMINANCE, MULTIPLIER, PERCENTILE, START, add_sampler_args

    p = sub.add_parser("evaluate", help=command_help("evaluate"))
    p.add_argument("--sae", help="SAE folder with concepts.h5 (SAeUron's ablation, tuned and evaluated here)")
    p.add_argument("--unlearned", help="an unlearned-model folder from `saeuron unlearn` (any method; its targets are erased together)")
    p.add_argument("--targets", help="all-KINDs (all-styles, all-objects, ...) | KIND:VALUE,KIND:VALUE,... "
                                                    "(concepts of the SAE's scores)")
    p.add_argument("--judge", help="who labels the images: minicanvas (the shipped classifier; the default on minicanvas) or "
                                   "clip:MODEL (zero-shot CLIP from a local folder or hub id, over the concepts of each kind)")
    p.add_argument("--judge-template", action="append", metavar="KIND=TEMPLATE",
                   help="CLIP prompt template of a kind, with {value} (repeatable; default 'an image of {value}')")
    p.add_argument("--prompts", help="labelled prompt file (.csv / .jsonl) of the answer set (default: minicanvas's grid on "
                                     "minicanvas, else the labelled prompts of the store the scores came from)")
    p.add_argument("--seeds", default="300-304", help="evaluation seeds (default 300-304: disjoint from the default cache (0) "
                                                     "and tuning (100) seeds)")
    p.add_argument("--tune-seeds", default=None, help="tuning seeds, disjoint from --seeds (default: reuse stored values)")
    p.add_argument("--multiplier", type=MULTIPLIER, help="fixed multiplier for every target (instead of stored or tuned values)")
    p.add_argument("--percentile", type=PERCENTILE, help="fixed selection percentile for every target")
    p.add_argument("--tune-grid", default="minicanvas", choices=GRIDS,
                   help="the grid --tune-seeds searches: 'minicanvas' (default: percentiles 99.5/99.7/99.9 x multipliers "
                        "-1/-5/-10/-20) or 'saeuron-paper' (the paper's 1, 2 or 3 features a step at this SAE's width x "
                        "multipliers -1/-5/-10/-15/-20/-25/-30); --tune-percentiles / --tune-multipliers override either")
    p.add_argument("--tune-percentiles", help=f"percentiles to search with --tune-seeds (default {','.join(map(str, TUNING_GRID['percentile']))})")
    p.add_argument("--tune-multipliers", help=f"multipliers to search with --tune-seeds (default {','.join(map(str, TUNING_GRID['multiplier']))})")
    p.add_argument("--dominance", type=DOMINANCE, help="fixed minimum dominance for every target: keep only features the target fires at "
                                                   "least this many times as strongly as any other concept (0: no filter, SAeUron)")
    p.add_argument("--tune-dominances", help="minimum dominances to search with --tune-seeds (default 0: SAeUron's selection alone)")
    p.add_argument("--start", type=START, help="fixed ablation start for every target: the fraction of the denoising steps left "
                                               "unablated at the beginning (0: every step, SAeUron)")
    p.add_argument("--tune-starts", help="ablation starts to search with --tune-seeds (default 0: every step, SAeUron)")
    p.add_argument("--together", action="store_true", help="erase all targets at once")
    p.add_argument("--out", required=True, help="results JSON")
    p.add_argument("--report", help="folder for report.md and PNG grids")
    add_rule_args(p)
    add_sampler_args(p)
    p.set_defaults(func=_cmd_evaluate)
