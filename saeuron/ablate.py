"""Inference-time interventions with an SAE: SAeUron's concept ablation and single-feature steering.

The block output x is encoded to latents f; the intervention edits f to f'; the block then
returns x + decode(f') - decode(f). The SAE's reconstruction error stays in the signal, and
when nothing is changed the output is x exactly. (The public SAeUron code returns
`decode(f') + (decode(f) - x)`, which subtracts the error instead.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .concepts import ConceptScores, select_features
from .errors import UserError


@dataclass(frozen=True)
class StepAblation:
    """What to ablate at one denoising step: features, their multipliers and firing thresholds."""

    features: torch.Tensor  # (n,) long
    scale: torch.Tensor  # (n,) gamma * mu_{c,i,t}
    threshold: torch.Tensor  # (n,) mean over concepts of the per-concept mean activation


@dataclass(frozen=True)
class AblationPlan:
    """Per step index, the ablation to apply (steps absent from the dict are left alone)."""

    steps: dict[int, StepAblation] = field(default_factory=dict)

    def n_features(self) -> int:
        """Total selected (step, feature) pairs."""
        return sum(len(s.features) for s in self.steps.values())


def plan_ablation(scores: ConceptScores, targets: list[str], multiplier: float, percentile: float | None = None,
                  top_n: int | None = None, step_window: tuple[int, int] | None = None) -> AblationPlan:
    """SAeUron's selection for one or more target concepts (union over targets), per step."""
    if multiplier >= 0:
        raise UserError(f"the ablation multiplier must be negative (SAeUron uses -1 ... -30), got {multiplier}")
    rows = [scores.index(t) for t in targets]
    steps: dict[int, StepAblation] = {}
    step_ids = scores.steps if scores.steps is not None else np.arange(scores.scores.shape[1])
    lo, hi = step_window or (0, int(step_ids.max()) + 1)
    for t, step in enumerate(step_ids.tolist()):
        if not lo <= step < hi:
            continue
        chosen: dict[int, tuple[float, float]] = {}  # feature -> (mu of its concept, firing threshold)
        for r in rows:
            kind_rows = scores.kind_rows(scores.concepts[r].split(":", 1)[0])
            for i in select_features(scores.scores[r, t][None], percentile, top_n)[0]:
                mu = float(scores.mean_acts[r, t, i])
                if int(i) not in chosen or mu > chosen[int(i)][0]:  # union; the strongest concept's mean
                    chosen[int(i)] = (mu, float(scores.mean_acts[kind_rows, t, i].mean()))
        if not chosen:
            continue
        ids = sorted(chosen)
        steps[step] = StepAblation(
            features=torch.tensor(ids, dtype=torch.long),
            scale=torch.tensor([multiplier * chosen[i][0] for i in ids], dtype=torch.float32),
            threshold=torch.tensor([chosen[i][1] for i in ids], dtype=torch.float32),
        )
    return AblationPlan(steps)


def _apply_latent_edit(sae, acts_btd: torch.Tensor, edit) -> torch.Tensor:
    """x + decode(edit(f)) - decode(f), computed in the SAE's dtype."""
    x = acts_btd.to(sae.W_dec.dtype)
    f = sae.encode(x)
    f_new = edit(f)
    return acts_btd + (sae.decode(f_new) - sae.decode(f)).to(acts_btd.dtype)


def ablate_acts(sae, acts_btd: torch.Tensor, step: StepAblation | None) -> torch.Tensor:
    """SAeUron's ablation on token vectors: where a selected feature fires above its threshold, scale it."""
    if step is None or len(step.features) == 0:
        return acts_btd

    def edit(f):
        ids = step.features.to(f.device)
        sel = f[..., ids]
        new = torch.where(sel > step.threshold.to(f), sel * step.scale.to(f), sel)
        out = f.clone()
        out[..., ids] = new
        return out

    return _apply_latent_edit(sae, acts_btd, edit)


def steer_acts(sae, acts_btd: torch.Tensor, feature: int, value: float, mode: str = "add") -> torch.Tensor:
    """Turn one feature up or down: 'add' adds value x its decoder direction everywhere, 'scale' multiplies its activation."""
    if not 0 <= feature < sae.W_dec.shape[0]:
        raise UserError(f"feature {feature} out of range; the SAE has {sae.W_dec.shape[0]} features")
    if mode == "add":
        return acts_btd + (value * sae.W_dec[feature]).to(acts_btd.dtype)
    if mode == "scale":
        def edit(f):
            out = f.clone()
            out[..., feature] = f[..., feature] * value
            return out

        return _apply_latent_edit(sae, acts_btd, edit)
    raise UserError(f"unknown steering mode {mode!r}; valid: add, scale")


DEFAULT_MULTIPLIER = -1.0
DEFAULT_PERCENTILE = 99.7  # ~3 of 1024 features per step on minicanvas; used until tuned values are stored


def sample_with_ablation(pipe, sae, hookpoint: str, plan: AblationPlan, prompts, seeds, config):
    """Generate with the plan applied to the hookpoint at its steps, on both CFG halves."""
    from .hooks import intervene
    from .pipelines import sample

    with torch.no_grad(), intervene(pipe, hookpoint, lambda acts, step, _t: ablate_acts(sae, acts, plan.steps.get(step))) as hook:
        return sample(pipe, prompts, seeds, config, on_step=hook.on_step)


def parse_targets(text: str) -> list[str]:
    """'style:neon,object:star' -> ['style:neon', 'object:star'], checked against the minicanvas world."""
    from .minicanvas.world import check_concept

    targets = [t.strip() for t in text.split(",") if t.strip()]
    if not targets:
        raise UserError(f"no targets in {text!r}; give e.g. style:neon,object:star")
    for t in targets:
        kind, _, name = t.partition(":")
        try:
            check_concept(kind, name)
        except ValueError as err:
            raise UserError(f"bad target {t!r}: {err}") from None
    return targets
