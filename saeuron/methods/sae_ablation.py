"""SAeUron (Cywinski and Deja, ICML 2025, arXiv 2501.18052) under the unlearn contract: no weights change; the folder
names the SAE (trained and scored by `saeuron train` / `saeuron score`) and each target's ablation setting. Several SAEs
(`--sae A@style,B@object`, at different hookpoints) ablate together in one pass, each the targets of its kinds (without
@KIND: every target) with its own settings, as the paper erases styles at one block and objects at another."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from ..concept_set import Concept
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

        sites_given = sae_sites(ctx.sae)
        if not sites_given:
            raise UserError("--method saeuron needs --sae DIR[,DIR...] (SAE folders with concepts.h5 from `saeuron score`)")
        if ctx.site_settings is not None and len(ctx.site_settings) != len(sites_given):
            raise UserError(f"{len(ctx.site_settings)} per-site settings for {len(sites_given)} SAE folders; give one per folder")
        given = {k: None if ctx.params[k] == "tuned" else float(ctx.params[k]) for k in SETTING_DEFAULTS}
        sites, hookpoints, covered = [], set(), set()
        for i, (sae_dir, kinds) in enumerate(sites_given):
            site = load_ablation_site(sae_dir, ctx.pipe, ctx.params["selection"], ctx.params["firing"])
            if site.hookpoint in hookpoints:
                raise UserError(f"--sae names two SAEs of {site.hookpoint!r}; give one SAE a hookpoint")
            hookpoints.add(site.hookpoint)
            targets = [t for t in ctx.targets if kinds is None or Concept.parse(t).kind in kinds]
            if not targets:
                raise UserError(f"--sae {sae_dir}@{'+'.join(kinds)}: none of the targets {', '.join(ctx.targets)} is of that kind")
            covered.update(targets)
            own = ctx.site_settings[i] if ctx.site_settings else {}  # a caller's per-site settings (the demo's), else given / tuned
            settings = {t: own[t] if t in own else site.params(t, **given) for t in targets}
            plan = site.plan(targets, params=settings)
            # the seeds a stored (tuned.json) value was chosen on, for the evaluation to refuse
            tune_seeds = {t: site.tuned[t].get("tune_seeds", []) for t in targets if t not in own and t in site.tuned
                          and any(given[k] is None and k in site.tuned[t] for k in SETTING_DEFAULTS)}
            sites.append({"sae": str(Path(sae_dir).resolve()), "hookpoint": site.hookpoint, "targets": targets, "settings": settings,
                          "features": plan.n_features(), "tune_seeds": tune_seeds})
        if missing := [t for t in ctx.targets if t not in covered]:
            raise UserError(f"no --sae ablates {', '.join(missing)}; give an SAE for its kind (DIR@KIND) or one without @")
        return {"sites": sites, "features": sum(s["features"] for s in sites)}

    @contextlib.contextmanager
    def applied(self, pipe, folder: Path, record: dict, prompts: list[str], config) -> Iterator[SampleHooks]:
        from ..ablate import ablations_applied, load_ablation_site

        edits = []
        for entry in record_sites(record):
            if not Path(entry["sae"]).is_dir():
                raise UserError(f"the SAE folder {entry['sae']!r} that {str(folder)!r} names is not here")
            site = load_ablation_site(entry["sae"], pipe, record["params"]["selection"], record["params"]["firing"])
            site.sae.requires_grad_(False)
            plan = site.plan(entry["targets"], params=entry["settings"])
            edits.append((site.sae, site.hookpoint, plan, site.capture))
        # no torch.no_grad() here: sampling runs without gradients anyway, and attacks (saeuron/attack.py) differentiate
        # through the ablation, as the paper's own UnlearnDiffAtk evaluation does
        with ablations_applied(pipe, edits) as on_step:
            yield SampleHooks(on_step=on_step)

    def target_params(self, record: dict, target: str) -> dict:
        """The folder's settings with the target's own (percentile, multiplier, ...) from the first site that ablates it,
        and the hookpoints of every such site."""
        sites = [e for e in record_sites(record) if target in e["targets"]]
        return {**record["params"], **(sites[0]["settings"][target] if sites else {}),
                "hookpoint": ",".join(str(e["hookpoint"]) for e in sites)}

    def check_evaluation_seeds(self, folder: Path, record: dict, seeds: list[int]) -> None:
        """SAeUron's features were selected on its scores' cache seeds, and tuned values on their tuning seeds: evaluating
        on either would judge the erasure on the images that chose it."""
        from ..concepts import ConceptScores

        for entry in record_sites(record):
            scores = Path(entry["sae"]) / "concepts.h5"
            if scores.exists():
                ConceptScores.load(scores).check_unseen(seeds, f" of {entry['sae']!r}")
            for target, tuned_on in (entry.get("tune_seeds") or {}).items():
                if shared := sorted(set(tuned_on) & set(seeds)):
                    raise UserError(f"{str(folder)!r} uses {target}'s values tuned on seeds {sorted(tuned_on)}, which overlap "
                                    f"the evaluation seeds {shared}; evaluate on seeds disjoint from them")


def sae_sites(sae: str | Path | list | None) -> list[tuple[str, tuple[str, ...] | None]]:
    """`--sae DIR[@KIND[+KIND]][,DIR...]` (or a list of such entries) -> [(DIR, kinds or None: every target)]: each SAE
    ablates the targets of its kinds, e.g. styles at one block and objects at another, as the paper places them."""
    if not sae:
        return []
    items = sae if isinstance(sae, (list, tuple)) else str(sae).split(",")
    sites = []
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        folder, sep, kinds = item.rpartition("@") if "@" in item else (item, "", "")
        if sep and not all(k.strip() for k in kinds.split("+")):
            raise UserError(f"bad --sae entry {item!r}; write DIR or DIR@KIND (e.g. saes/up_blocks.0.attentions.1@object)")
        sites.append((folder, tuple(k.strip() for k in kinds.split("+")) if sep else None))
    return sites


def record_sites(record: dict) -> list[dict]:
    """The SAE sites of a saeuron unlearn.json: {"sae", "hookpoint", "targets", "settings", "features"} each (a record
    written before several sites were possible names one SAE, for every target, at its top level)."""
    if "sites" in record:
        return record["sites"]
    return [{"targets": record["targets"], **{k: record.get(k) for k in ("sae", "hookpoint", "settings", "features")}}]
