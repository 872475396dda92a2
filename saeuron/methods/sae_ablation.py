"""SAeUron (Cywinski and Deja, ICML 2025, arXiv 2501.18052) under the unlearn contract: no weights change; the folder
names the SAE (trained and scored by `saeuron train` / `saeuron score`) and each target's ablation setting."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from ..errors import UserError
from .base import FitContext, Hyper, Method, SampleHooks


class SAeUron(Method):
    name = "saeuron"
    summary = "SAeUron (SAE feature ablation at inference; weights unchanged)"
    defaults = {
        "percentile": Hyper("tuned", 99.999, "per target: tuned.json's value, else 99.7 (~3 of 1,024 features per step, as "
                                             "the paper's 99.999 of 20,480)"),
        "multiplier": Hyper("tuned", -1.0, "per target: tuned.json's value, else -1"),
        "dominance": Hyper("tuned", 0.0, "per target: tuned.json's value, else 0 (no filter, as the paper)"),
        "start": Hyper("tuned", 0.0, "per target: tuned.json's value, else 0 (every denoising step ablated, as the paper)"),
        "selection": Hyper("saeuron", "saeuron"),
        "firing": Hyper("mean", "mean"),
    }

    def fit(self, ctx: FitContext) -> dict:
        from ..ablate import SETTING_DEFAULTS, load_ablation_site

        if not ctx.sae:
            raise UserError("--method saeuron needs --sae DIR (an SAE folder with concepts.h5 from `saeuron score`)")
        site = load_ablation_site(ctx.sae, ctx.pipe, ctx.params["selection"], ctx.params["firing"])
        given = {k: None if ctx.params[k] == "tuned" else float(ctx.params[k]) for k in SETTING_DEFAULTS}
        settings = {t: site.params(t, **given) for t in ctx.targets}
        plan = site.plan(ctx.targets, params=settings)
        return {"sae": str(Path(ctx.sae).resolve()), "hookpoint": site.hookpoint, "settings": settings, "features": plan.n_features()}

    @contextlib.contextmanager
    def applied(self, pipe, folder: Path, record: dict, prompts: list[str], config) -> Iterator[SampleHooks]:
        from ..ablate import ablate_acts, load_ablation_site
        from ..hooks import intervene

        if not Path(record["sae"]).is_dir():
            raise UserError(f"the SAE folder {record['sae']!r} that {str(folder)!r} names is not here")
        site = load_ablation_site(record["sae"], pipe, record["params"]["selection"], record["params"]["firing"])
        plan = site.plan(record["targets"], params=record["settings"]).to(site.sae.W_dec.device)
        site.sae.requires_grad_(False)
        # no torch.no_grad() here: sampling runs without gradients anyway, and attacks (saeuron/attack.py) differentiate
        # through the ablation, as the paper's own UnlearnDiffAtk evaluation does
        with intervene(pipe, site.hookpoint, lambda acts, step, t: ablate_acts(site.sae, acts, plan.at(step, t)),
                                        capture=site.capture) as hook:
            yield SampleHooks(on_step=hook.on_step)
