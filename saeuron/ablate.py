"""Inference-time interventions with an SAE: SAeUron's concept ablation and single-feature steering.

The block output x is encoded to latents f; the intervention edits f to f'; the block then
returns x + decode(f') - decode(f). The SAE's reconstruction error stays in the signal, and
when nothing is changed the output is x exactly. (The public SAeUron code returns
`decode(f') + (decode(f) - x)`, which subtracts the error instead.)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .concepts import ConceptScores, select_features
from .errors import UserError, read_json


@dataclass(frozen=True)
class StepAblation:
    """What to ablate at one denoising step: features, their multipliers and firing thresholds."""

    features: torch.Tensor  # (n,) long
    scale: torch.Tensor  # (n,) gamma * mu_{c,i,t}
    threshold: torch.Tensor  # (n,) mean over concepts of the per-concept mean activation


@dataclass(frozen=True)
class AblationPlan:
    """Per cached step index, the ablation to apply (steps absent from the dict are left alone).

    `timesteps` maps every step of the cache the scores came from to its timestep, so that a
    sampler with another step count (or a cache that kept only some steps) is matched by noise
    level: each sampler step uses the cached step of nearest timestep.
    """

    steps: dict[int, StepAblation] = field(default_factory=dict)
    timesteps: dict[int, int] = field(default_factory=dict)

    def to(self, device) -> "AblationPlan":
        """The plan with its tensors on `device` (moved once, not at every denoising step)."""
        moved = {s: StepAblation(a.features.to(device), a.scale.to(device), a.threshold.to(device)) for s, a in self.steps.items()}
        return AblationPlan(moved, dict(self.timesteps))

    def n_features(self) -> int:
        """Total selected (step, feature) pairs."""
        return sum(len(s.features) for s in self.steps.values())

    def at(self, step: int | None, timestep: int | None) -> StepAblation | None:
        """The ablation for one sampler step: by nearest cached timestep, or by step index without timesteps."""
        if timestep is None or not self.timesteps:
            return self.steps.get(step)
        nearest = min(self.timesteps, key=lambda s: (abs(self.timesteps[s] - timestep), s))
        return self.steps.get(nearest)


def cached_step_timesteps(scores: ConceptScores) -> dict[int, int]:
    """Step index -> timestep of every step the scores cover."""
    step_ids = scores.steps if scores.steps is not None else np.arange(len(scores.timesteps))
    return {int(s): int(t) for s, t in zip(step_ids, scores.timesteps)}


def merge_plans(*plans: AblationPlan) -> AblationPlan:
    """Union of plans step by step; a feature in several keeps its strongest (most negative) scale."""
    table: dict[int, dict[int, tuple[float, float]]] = {}
    timesteps: dict[int, int] = {}
    for plan in plans:
        timesteps.update(plan.timesteps)
        for step, sa in plan.steps.items():
            row = table.setdefault(step, {})
            for f, sc, th in zip(sa.features.tolist(), sa.scale.tolist(), sa.threshold.tolist()):
                if f not in row or sc < row[f][0]:
                    row[f] = (sc, th)
    steps = {}
    for step, row in sorted(table.items()):
        ids = sorted(row)
        steps[step] = StepAblation(torch.tensor(ids, dtype=torch.long), torch.tensor([row[i][0] for i in ids], dtype=torch.float32),
                                   torch.tensor([row[i][1] for i in ids], dtype=torch.float32))
    return AblationPlan(steps, timesteps)


FIRING_RULES = ("mean", "kept-max")


def firing_thresholds(scores: ConceptScores, row: int, target_rows: list[int], rule: str) -> np.ndarray:
    """(T, F) activation above which a feature selected for concept `row` counts as firing.

    "mean" (SAeUron): the mean over the concepts of the target's kind of their mean activation.
    "kept-max": the highest mean of a kept (non-target) concept of that kind, so the feature is
    only touched where it fires more than it does on average for any concept that must stay.
    """
    kind_rows = scores.kind_rows(scores.kind(row))
    if len(kind_rows) == 1 and scores.other_acts is not None:  # a one-value kind: the concept against the prompts without it
        rest = scores.other_acts[row]
        return (scores.mean_acts[row] + rest) / 2 if rule == "mean" else rest
    if rule == "mean":
        return scores.mean_acts[kind_rows].mean(axis=0)
    kept = [r for r in kind_rows if r not in target_rows]
    return scores.mean_acts[kept].max(axis=0) if kept else np.zeros_like(scores.mean_acts[row])


SAME_KIND_RIVALS = {"exclusive": False, "specific": True}  # selection rule -> do concepts of the target's kind exclude too?
# SAeUron's ranking; minus features another kind / any other concept scores higher; the one latent concept supervision
# bound the concept to (SAEmnesia; an SAE from `saeuron supervise`)
SELECTIONS = ("saeuron", *SAME_KIND_RIVALS, "assigned")


def check_rules(selection: str, firing: str = "mean") -> None:
    """Valid feature-selection and firing-threshold rule names, or a clear error."""
    for what, value, valid in (("feature selection", selection, SELECTIONS), ("firing threshold rule", firing, FIRING_RULES)):
        if value not in valid:
            raise UserError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


def _ranking(scores: ConceptScores, row: int, selection: str) -> np.ndarray:
    """(T, F) what the selection rule ranks a concept's features by."""
    if selection == "saeuron":
        return scores.scores[row]
    if selection == "assigned":  # the bound latent alone, at its score (a step where it scores <= 0 selects nothing)
        latent = scores.bound_latent(row)
        only = np.zeros_like(scores.scores[row])
        only[:, latent] = scores.scores[row][:, latent]
        return only
    return scores.exclusive_scores(row, SAME_KIND_RIVALS[selection])


def plan_ablation(scores: ConceptScores, targets: list[str], multiplier: float, percentile: float | None = None,
                  top_n: int | None = None, step_window: tuple[int, int] | None = None,
                  selection: str = "saeuron", firing: str = "mean", min_dominance: float = 0.0, start: float = 0.0) -> AblationPlan:
    """SAeUron's selection for one or more target concepts (union over targets), per step.

    `selection` (see SELECTIONS): "saeuron" (the paper) ranks all features by the target's
    score; "exclusive" only features whose target score beats every concept of the other
    kind; "specific" only those whose target score beats every other concept
    (`ConceptScores.exclusive_scores`); "assigned" the one latent that concept supervision bound the
    target to (`saeuron supervise`), whatever the percentile. `min_dominance` R > 0 further keeps only features the
    target fires at least R times as strongly as any other concept (`ConceptScores.dominance`):
    a feature a neighbour fires almost as much is scaled on the neighbour's images too.
    `start` in [0, 1) leaves the first `start` of the cached steps unablated (0: every step, as the
    paper; `start_step`).
    """
    if multiplier >= 0:
        raise UserError(f"the ablation multiplier must be negative (SAeUron uses -1 ... -30), got {multiplier}")
    if not min_dominance >= 0:
        raise UserError(f"the minimum dominance must be >= 0 (0: no filter), got {min_dominance}")
    if not 0 <= start < 1:
        raise UserError(f"the ablation start must be a fraction of the denoising steps in [0, 1) (0: every step), got {start}")
    check_rules(selection, firing)
    rows = [scores.index(t) for t in targets]
    ranked = {r: _ranking(scores, r, selection) for r in rows}
    if min_dominance > 0:
        ranked = {r: np.where(scores.dominance(r) >= min_dominance, ranked[r], 0.0) for r in rows}
    thresholds = {r: firing_thresholds(scores, r, rows, firing) for r in rows}
    steps: dict[int, StepAblation] = {}
    step_ids = scores.steps if scores.steps is not None else np.arange(scores.scores.shape[1])
    n_steps = int(step_ids.max()) + 1
    lo, hi = step_window or (0, n_steps)
    lo = max(lo, start_step(start, n_steps))
    for t, step in enumerate(step_ids.tolist()):
        if not lo <= step < hi:
            continue
        chosen: dict[int, tuple[float, float]] = {}  # feature -> (mu of its concept, firing threshold)
        for r in rows:
            for i in select_features(ranked[r][t][None], percentile, top_n)[0]:
                mu = float(scores.mean_acts[r, t, i])
                if int(i) not in chosen or mu > chosen[int(i)][0]:  # union; the strongest concept's mean
                    chosen[int(i)] = (mu, float(thresholds[r][t, i]))
        if not chosen:
            continue
        ids = sorted(chosen)
        steps[step] = StepAblation(
            features=torch.tensor(ids, dtype=torch.long),
            scale=torch.tensor([multiplier * chosen[i][0] for i in ids], dtype=torch.float32),
            threshold=torch.tensor([chosen[i][1] for i in ids], dtype=torch.float32),
        )
    return AblationPlan(steps, cached_step_timesteps(scores))


def start_step(start: float, n_steps: int) -> int:
    """The first step index ablated when the first `start` of `n_steps` denoising steps are left alone."""
    return int(round(start * n_steps))


def _linear_decoder(sae) -> bool:
    """Whether the SAE decodes as f @ W_dec + b_dec (sae-lens without output normalisation or head reshaping), so that
    a change of a few latents decodes through their rows alone."""
    cfg = sae.cfg
    return getattr(cfg, "normalize_activations", "none") == "none" and getattr(cfg, "reshape_activations", "none") == "none"


def _edit_latents(sae, acts_btd: torch.Tensor, ids: torch.Tensor, edit) -> torch.Tensor:
    """x + decode(f') - decode(f), where f' is f with the latents `ids` set to `edit(f[..., ids])`, in the SAE's dtype.
    With a linear decoder only the decoder rows of `ids` are used (the ablation's cost is then the encoder alone)."""
    x = acts_btd.to(sae.W_dec.dtype)
    f = sae.encode(x)
    ids = ids.to(f.device)
    sel = f[..., ids]
    change = edit(sel) - sel
    if _linear_decoder(sae):
        rows = sae.W_dec[ids]
        if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
            change = change / rows.norm(dim=-1)
        delta = change @ rows
    else:
        edited = f.clone()
        edited[..., ids] = sel + change
        delta = sae.decode(edited) - sae.decode(f)
    return acts_btd + delta.to(acts_btd.dtype)


def ablate_acts(sae, acts_btd: torch.Tensor, step: StepAblation | None) -> torch.Tensor:
    """SAeUron's ablation on token vectors: where a selected feature fires above its threshold, scale it."""
    if step is None or len(step.features) == 0:
        return acts_btd
    threshold, scale = step.threshold.to(sae.W_dec), step.scale.to(sae.W_dec)
    return _edit_latents(sae, acts_btd, step.features, lambda sel: torch.where(sel > threshold, sel * scale, sel))


def steer_acts(sae, acts_btd: torch.Tensor, feature: int, value: float, mode: str = "add") -> torch.Tensor:
    """Turn one feature up or down: 'add' adds value x its decoder direction everywhere, 'scale' multiplies its activation."""
    if not 0 <= feature < sae.W_dec.shape[0]:
        raise UserError(f"feature {feature} out of range; the SAE has {sae.W_dec.shape[0]} features")
    if mode == "add":
        return acts_btd + (value * sae.W_dec[feature]).to(acts_btd.dtype)
    if mode == "scale":
        return _edit_latents(sae, acts_btd, torch.tensor([feature]), lambda sel: sel * value)
    raise UserError(f"unknown steering mode {mode!r}; valid: add, scale")


DEFAULT_MULTIPLIER = -1.0
DEFAULT_PERCENTILE = 99.7  # ~3 of 1024 features per step on minicanvas; used until tuned values are stored
# a target's ablation setting: selection percentile, SAeUron's multiplier gamma, minimum dominance (0: off), and the
# fraction of the denoising steps left unablated at the start (0: every step is ablated, as in the paper)
SETTING_DEFAULTS = {"percentile": DEFAULT_PERCENTILE, "multiplier": DEFAULT_MULTIPLIER, "dominance": 0.0, "start": 0.0}


def plan_for_setting(scores: ConceptScores, target: str, setting: dict, selection: str = "saeuron", firing: str = "mean",
                     step_window: tuple[int, int] | None = None) -> AblationPlan:
    """`plan_ablation` of one target from its setting (keys of SETTING_DEFAULTS; a missing key takes its default)."""
    s = {**SETTING_DEFAULTS, **setting}
    return plan_ablation(scores, [target], float(s["multiplier"]), percentile=float(s["percentile"]), step_window=step_window,
                         selection=selection, firing=firing, min_dominance=float(s["dominance"]), start=float(s["start"]))


@contextlib.contextmanager
def ablations_applied(pipe, edits: list[tuple[object, str, AblationPlan, str]]) -> Iterator[Callable[[int, int], None]]:
    """Within the block, each (sae, hookpoint, plan, capture) ablation acts on its hookpoint, both CFG halves; yields
    the `on_step` callback that `pipelines.sample` must get. Several sites act in one pass (e.g. styles at one block and
    objects at another)."""
    from .hooks import intervene

    with contextlib.ExitStack() as stack:
        hooks = []
        for sae, hookpoint, plan, capture in edits:
            plan = plan.to(sae.W_dec.device)
            fn = lambda acts, step, t, sae=sae, plan=plan: ablate_acts(sae, acts, plan.at(step, t))  # noqa: E731
            hooks.append(stack.enter_context(intervene(pipe, hookpoint, fn, capture=capture)))

        def on_step(i: int, t: int) -> None:
            for hook in hooks:
                hook.on_step(i, t)

        yield on_step


def sample_with_ablation(pipe, sae, hookpoint: str, plan: AblationPlan, prompts, seeds, config, capture: str = "output"):
    """Generate with the plan applied to the hookpoint (on the signal the SAE was trained on), both CFG halves."""
    return sample_with_ablations(pipe, [(sae, hookpoint, plan, capture)], prompts, seeds, config)


def sample_with_ablations(pipe, edits: list[tuple[object, str, AblationPlan, str]], prompts, seeds, config):
    """Generate with every (sae, hookpoint, plan, capture) edit applied in one pass (`ablations_applied`)."""
    from .pipelines import sample

    with torch.no_grad(), ablations_applied(pipe, edits) as on_step:
        return sample(pipe, prompts, seeds, config, on_step=on_step)


@dataclass
class AblationSite:
    """An SAE folder ready for ablation: its hookpoint and signal, the SAE, its concept scores and tuned values."""

    sae_dir: Path
    hookpoint: str
    capture: str  # "output" or "residual": what the SAE was trained on
    sae: object
    scores: ConceptScores
    tuned: dict[str, dict]  # target -> {"percentile", "multiplier", ...} from tuned.json
    selection: str = "saeuron"  # see SELECTIONS
    firing: str = "mean"  # see FIRING_RULES

    def params(self, target: str, **given: float | None) -> dict:
        """The target's setting (the keys of SETTING_DEFAULTS): given values (None: not given),
        else the tuned ones, else the defaults."""
        unknown = set(given) - set(SETTING_DEFAULTS)
        if unknown:
            raise TypeError(f"unknown ablation settings {sorted(unknown)}; valid: {', '.join(SETTING_DEFAULTS)}")
        stored = self.tuned.get(target, {})
        return {k: given[k] if given.get(k) is not None else stored.get(k, default) for k, default in SETTING_DEFAULTS.items()}

    def plan(self, targets: list[str], params: dict[str, dict] | None = None, **given: float | None) -> AblationPlan:
        """One plan erasing all targets, each selected with its own setting (`params[target]`, else `self.params`)."""
        plans = []
        for t in targets:
            plans.append(plan_for_setting(self.scores, t, (params or {}).get(t) or self.params(t, **given), self.selection, self.firing))
        return merge_plans(*plans)

    def describe(self) -> dict:
        """What results.json records of the site."""
        return {"hookpoint": self.hookpoint, "selection": self.selection, "firing": self.firing}

    def sample(self, pipe, plan: AblationPlan, prompts, seeds, config) -> torch.Tensor:
        """Generate with the plan applied at this SAE's hookpoint."""
        return sample_with_ablation(pipe, self.sae, self.hookpoint, plan, prompts, seeds, config, capture=self.capture)


TUNED_FILE = "tuned.json"


def load_ablation_site(sae_dir: str | Path, pipe=None, selection: str = "saeuron", firing: str = "mean") -> AblationSite:
    """Open an SAE folder written by `saeuron train` + `saeuron score` (clear errors for what is missing)."""
    import json

    check_rules(selection, firing)
    from .sae import load_sae

    sae_dir = Path(sae_dir)
    cfg_path = sae_dir / "train_config.json"
    cfg = read_json(cfg_path, "SAE training config", default={})
    if not cfg.get("hookpoint"):
        raise UserError(f"{str(sae_dir)!r} has no train_config.json naming its hookpoint")
    scores_path = sae_dir / "concepts.h5"
    if not scores_path.exists():
        raise UserError(f"{str(scores_path)!r} not found; run `saeuron score --cache CACHE --sae {sae_dir}` first")
    width = None
    if pipe is not None:
        from .hooks import get_hookpoint

        width = get_hookpoint(pipe, cfg["hookpoint"]).width
    placement = {"device": pipe.unet.device, "dtype": pipe.unet.dtype} if pipe is not None else {}
    sae = load_sae(sae_dir, expected_width=width, hookpoint=cfg["hookpoint"], **placement).eval()
    tuned_path = sae_dir / TUNED_FILE
    tuned = read_json(tuned_path, "tuned settings file", default={})
    return AblationSite(sae_dir, cfg["hookpoint"], cfg.get("capture", "output"), sae, ConceptScores.load(scores_path), tuned, selection, firing)




def add_rule_args(parser) -> None:
    """The --selection and --firing options of the commands that ablate."""
    parser.add_argument("--selection", default="saeuron", choices=SELECTIONS,
                        help="feature selection: 'saeuron' (default) ranks all features by score, as the paper does; "
                             "'exclusive' skips features that a concept of the other kind scores higher; "
                             "'specific' skips features that any other concept scores higher; 'assigned' ablates the one "
                             "latent `saeuron supervise` bound the concept to (SAEmnesia)")
    parser.add_argument("--firing", default="mean", choices=FIRING_RULES,
                        help="where a selected feature is scaled: 'mean' (default, SAeUron) where it fires above its mean "
                             "over the concepts of the target's kind; 'kept-max' only above its highest mean on a kept concept")
