"""The `saeuron app` command and the data helpers of the Streamlit explorer (apps/explorer.py).

Nothing here imports streamlit: the app wraps these functions in st.cache_resource / st.cache_data,
and tests call them directly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import UserError, read_json

DEFAULT_RUN = "activations/demo"
APP_FILE = Path(__file__).resolve().parent.parent / "apps" / "explorer.py"


# ---------------------------------------------------------------- what a run directory holds


@dataclass
class RunInfo:
    """The pieces found in a run directory, and what is missing with the command that makes it."""

    run: Path
    cache: Path | None = None
    saes: dict[str, Path] = field(default_factory=dict)  # hookpoint -> SAE folder (listed by `sidebar_hookpoints`)
    concepts: dict[str, Path] = field(default_factory=dict)  # hookpoint -> concepts.h5
    eval_results: Path | None = None
    report: Path | None = None
    missing: list[str] = field(default_factory=list)  # one message per missing piece, naming the command


def _cache_path(run: Path) -> Path | None:
    for cand in (run / "cache.h5", run / "cache"):
        if cand.exists():
            return cand
    return None


def _train_config(folder: Path) -> dict:
    """The folder's train_config.json ({} for a foreign SAE without one, or an unreadable file)."""
    try:
        return read_json(folder / "train_config.json", "SAE training config")
    except UserError:
        return {}


def _sae_hookpoint(folder: Path) -> str:
    return str(_train_config(folder).get("hookpoint") or folder.name)


def sae_capture(folder: str | Path) -> str:
    """The signal an SAE folder was trained on: 'output' (default) or 'residual'."""
    return str(_train_config(Path(folder)).get("capture", "output"))


def sidebar_hookpoints(info: RunInfo) -> list[str]:
    """The run's SAE hookpoints as the sidebar lists them: block outputs before their sub-modules (e.g. the demo's
    cross-attention SAEs), so that a block's SAE is the one a page opens on."""
    return sorted(info.saes, key=lambda hp: (hp.count("."), hp))


def inspect_run(run: str | Path) -> RunInfo:
    """Which pieces of a run directory exist; `missing` names each absent one and the command that makes it."""
    run = Path(run)
    info = RunInfo(run=run)
    if not run.is_dir():
        info.missing.append(f"run directory {str(run)!r} does not exist; make one with `saeuron demo --out {run}`")
        return info
    info.cache = _cache_path(run)
    if info.cache is None:
        info.missing.append(f"no activation cache ({run}/cache.h5); make it with "
                            f"`saeuron cache --minicanvas --hookpoints HOOKPOINT --seeds 0-3 --out {run}/cache.h5`")
    saes_dir = run / "saes"
    if saes_dir.is_dir():
        for folder in sorted(p for p in saes_dir.iterdir() if p.is_dir()):
            if any((folder / n).exists() for n in ("cfg.json", "sae_weights.safetensors", "train_config.json")):
                hp = _sae_hookpoint(folder)
                info.saes[hp] = folder
                if (folder / "concepts.h5").exists():
                    info.concepts[hp] = folder / "concepts.h5"
                else:
                    info.missing.append(f"no concept scores for the SAE of {hp!r} ({folder}/concepts.h5); make them with "
                                        f"`saeuron score --cache {info.cache or run / 'cache.h5'} --sae {folder}`")
    if not info.saes:
        info.missing.append(f"no SAE in {run}/saes/; train one with `saeuron train --cache {info.cache or run / 'cache.h5'} "
                            f"--hookpoint HOOKPOINT --out {run}/saes/HOOKPOINT`")
    if (run / "eval" / "results.json").exists():
        info.eval_results = run / "eval" / "results.json"
    if (run / "report").is_dir():
        info.report = run / "report"
    return info


# ---------------------------------------------------------------- feature statistics from cache rows


@dataclass
class FeatureStats:
    """Per-feature statistics over a bounded sample of cache rows, grouped by image-step."""

    n_rows: int  # token rows sampled
    freq: np.ndarray  # (F,) fraction of sampled rows where the feature fires
    mean_act: np.ndarray  # (F,) mean activation over sampled rows
    max_act: np.ndarray  # (F,)
    groups: dict[str, np.ndarray]  # per image-step group: prompt, seed, step, timestep, start, stop (row range)
    group_max: np.ndarray  # (G, F) max over positions
    group_mean: np.ndarray  # (G, F) mean over positions
    nz_feature: np.ndarray  # sampled nonzero activations, sorted by feature
    nz_value: np.ndarray
    nz_offsets: np.ndarray  # (F+1,) feature f's values are nz_value[off[f]:off[f+1]]

    def values(self, feature: int) -> np.ndarray:
        """The sampled nonzero activations of one feature."""
        return self.nz_value[self.nz_offsets[feature]:self.nz_offsets[feature + 1]]

    def top_images(self, feature: int, n: int = 8) -> list[dict]:
        """The (prompt, seed) pairs where the feature peaks, each with the step and row range of its peak."""
        g = self.groups
        col = self.group_max[:, feature]
        best: dict[tuple[int, int], int] = {}
        for i in np.argsort(-col, kind="stable"):
            if col[i] <= 0:
                break
            key = (int(g["prompt"][i]), int(g["seed"][i]))
            if key not in best:
                best[key] = int(i)
                if len(best) >= n:
                    break
        return [{"prompt": k[0], "seed": k[1], "step": int(g["step"][i]), "timestep": int(g["timestep"][i]),
                 "start": int(g["start"][i]), "stop": int(g["stop"][i]), "max_act": float(col[i])} for k, i in best.items()]

    def step_profile(self, feature: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per cached step: step indices, timesteps and the feature's mean activation over sampled images."""
        steps = np.unique(self.groups["step"])
        ts = np.array([int(self.groups["timestep"][self.groups["step"] == s][0]) for s in steps])
        means = np.array([float(self.group_mean[self.groups["step"] == s, feature].mean()) for s in steps])
        return steps, ts, means


def _runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and stop of each run of identical consecutive rows in keys (N, k)."""
    if len(keys) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    change = np.nonzero((keys[1:] != keys[:-1]).any(1))[0] + 1
    starts = np.concatenate([[0], change])
    stops = np.concatenate([change, [len(keys)]])
    return starts.astype(np.int64), stops.astype(np.int64)


@torch.no_grad()
def feature_stats(cache: str | Path, hookpoint: str, sae, max_rows: int = 60_000, seed: int = 0, block_rows: int = 16_384) -> FeatureStats:
    """Encode a bounded sample of whole image-steps of the cache with the SAE and summarise each feature."""
    from .cache import read_rows, row_provenance

    prov = row_provenance(cache, hookpoint)
    if len(prov["prompt"]) == 0:
        raise UserError(f"the cache {str(cache)!r} holds no rows for {hookpoint!r}")
    keys = np.stack([prov["prompt"], prov["seed"], prov["step"], prov["branch"]], 1)
    starts, stops = _runs(keys)
    sizes = stops - starts
    order = np.random.default_rng(seed).permutation(len(starts))
    chosen = np.sort(order[: max(1, int(np.searchsorted(np.cumsum(sizes[order]), max_rows, side="right")))])
    d_sae = int(sae.W_dec.shape[0])
    n_rows = 0
    fires = torch.zeros(d_sae, dtype=torch.float64)
    sums = torch.zeros(d_sae, dtype=torch.float64)
    maxes = torch.zeros(d_sae)
    gmax = np.zeros((len(chosen), d_sae), np.float32)
    gmean = np.zeros((len(chosen), d_sae), np.float32)
    nz_f, nz_v = [], []
    # read contiguous spans of chosen groups in blocks
    i = 0
    while i < len(chosen):
        j = i
        while j + 1 < len(chosen) and chosen[j + 1] == chosen[j] + 1 and stops[chosen[j + 1]] - starts[chosen[i]] <= block_rows:
            j += 1
        lo, hi = int(starts[chosen[i]]), int(stops[chosen[j]])
        x = read_rows(cache, hookpoint, lo, hi).to(sae.W_dec.device, sae.W_dec.dtype)
        lat = sae.encode(x).float().clamp_min(0).cpu()  # summaries for display live on the CPU
        n_rows += len(lat)
        fires += (lat > 0).sum(0).double()
        sums += lat.sum(0).double()
        maxes = torch.maximum(maxes, lat.max(0).values)
        for g in range(i, j + 1):
            a, b = int(starts[chosen[g]]) - lo, int(stops[chosen[g]]) - lo
            gmax[g] = lat[a:b].max(0).values.numpy()
            gmean[g] = lat[a:b].mean(0).numpy()
        r, c = torch.nonzero(lat, as_tuple=True)
        nz_f.append(c.numpy().astype(np.int32))
        nz_v.append(lat[r, c].numpy())
        i = j + 1
    nz_feature = np.concatenate(nz_f)
    nz_value = np.concatenate(nz_v)
    if len(nz_value) > 5_000_000:  # keep the histogram data bounded
        keep = np.random.default_rng(seed).choice(len(nz_value), 5_000_000, replace=False)
        nz_feature, nz_value = nz_feature[keep], nz_value[keep]
    srt = np.argsort(nz_feature, kind="stable")
    nz_feature, nz_value = nz_feature[srt], nz_value[srt]
    offsets = np.searchsorted(nz_feature, np.arange(d_sae + 1))
    groups = {k: prov[k][starts[chosen]] for k in ("prompt", "seed", "step", "timestep")}
    groups["start"], groups["stop"] = starts[chosen], stops[chosen]
    return FeatureStats(n_rows, (fires / max(n_rows, 1)).numpy(), (sums / max(n_rows, 1)).numpy(), maxes.numpy(),
                        groups, gmax, gmean, nz_feature, nz_value, offsets)


@torch.no_grad()
def spatial_map(cache: str | Path, hookpoint: str, sae, start: int, stop: int, feature: int) -> np.ndarray:
    """The feature's activation at each cached position of one image-step, as a square map (side x side)."""
    from .cache import read_rows, row_provenance

    x = read_rows(cache, hookpoint, start, stop).to(sae.W_dec.device, sae.W_dec.dtype)
    lat = sae.encode(x)[:, feature].float().clamp_min(0).cpu().numpy()
    pos = row_provenance(cache, hookpoint, slice(start, stop))["position"]
    n = int(pos.max()) + 1 if len(pos) else 1
    side = int(np.ceil(np.sqrt(n)))
    out = np.zeros(side * side, np.float32)
    out[pos] = lat
    return out.reshape(side, side)


def overlay(image_hw3: np.ndarray, heat: np.ndarray, alpha: float = 0.55, vmax: float | None = None) -> np.ndarray:
    """Blend a heat map (any square size, nearest-upsampled) over a uint8 image with a black-red-yellow ramp."""
    h, w = image_hw3.shape[:2]
    ys = (np.arange(h) * heat.shape[0] // h).clip(0, heat.shape[0] - 1)
    xs = (np.arange(w) * heat.shape[1] // w).clip(0, heat.shape[1] - 1)
    v = heat[ys][:, xs]
    top = vmax if vmax else float(v.max())
    v = np.clip(v / top, 0, 1) if top > 0 else np.zeros_like(v)
    ramp = np.stack([np.clip(2 * v, 0, 1), np.clip(2 * v - 1, 0, 1), np.zeros_like(v)], -1) * 255
    a = (alpha * v)[..., None]
    return (image_hw3 * (1 - a) + ramp * a).round().astype(np.uint8)


def upscale(image_hw3: np.ndarray, size: int = 160) -> np.ndarray:
    """Nearest-neighbour upscale of a small image so pixels stay crisp on screen."""
    f = max(1, size // image_hw3.shape[0])
    return image_hw3.repeat(f, 0).repeat(f, 1)


def feature_table(stats: FeatureStats, scores=None) -> "pandas.DataFrame":  # noqa: F821
    """One row per feature: frequency, mean and max activation, top concept and its best score over steps."""
    import pandas as pd

    df = pd.DataFrame({"feature": np.arange(len(stats.freq)), "frequency": stats.freq, "mean_act": stats.mean_act,
                       "max_act": stats.max_act})
    if scores is not None and scores.scores.shape[2] == len(stats.freq):
        best_t = scores.scores.max(1)  # (C, F)
        top = best_t.argmax(0)
        df["top_concept"] = [scores.concepts[i] for i in top]
        df["top_score"] = best_t[top, np.arange(best_t.shape[1])]
    return df


# ---------------------------------------------------------------- interventions for the Ablate page


def manual_plan(scores, features: list[int], multiplier: float, step_window: tuple[int, int] | None = None):
    """An AblationPlan for hand-picked features: SAeUron's rule with mu = the strongest concept's mean per step."""
    from .ablate import AblationPlan, StepAblation, cached_step_timesteps

    n_feat = scores.scores.shape[2]
    for f in features:
        if not 0 <= f < n_feat:
            raise UserError(f"feature {f} out of range; the SAE has {n_feat} features (0..{n_feat - 1})")
    steps = scores.steps if scores.steps is not None else np.arange(scores.scores.shape[1])
    lo, hi = step_window or (0, int(steps.max()) + 1)
    out = {}
    ids = sorted(set(features))
    for t, step in enumerate(steps.tolist()):
        if not ids or not lo <= step < hi:
            continue
        mu = scores.mean_acts[:, t, ids]
        out[step] = StepAblation(torch.tensor(ids, dtype=torch.long),
                                 torch.tensor(multiplier * mu.max(0), dtype=torch.float32),
                                 torch.tensor(mu.mean(0), dtype=torch.float32))
    return AblationPlan(out, cached_step_timesteps(scores))


@torch.no_grad()
def sample_steered(pipe, sae, hookpoint: str, feature: int, value: float, mode: str, prompts, seeds, config,
                   step_window: tuple[int, int] | None = None, capture: str = "output") -> torch.Tensor:
    """Generate with one feature turned up (or down) at the sampler steps inside the window."""
    from .ablate import steer_acts
    from .hooks import intervene
    from .pipelines import sample

    steer_acts(sae, torch.zeros(1, 1, sae.W_dec.shape[1], device=sae.W_dec.device, dtype=sae.W_dec.dtype), feature, value, mode)  # validates feature and mode
    lo, hi = step_window or (0, config.steps)

    def fn(acts, step, _t):
        if step is None or lo <= step < hi:
            return steer_acts(sae, acts, feature, value, mode)
        return acts

    with intervene(pipe, hookpoint, fn, capture=capture) as hook:
        return sample(pipe, prompts, seeds, config, on_step=hook.on_step)


def parse_feature_ids(text: str) -> list[int]:
    """'12, 40 7' -> [12, 40, 7]; a clear error for anything that is not an integer."""
    out = []
    for tok in text.replace(",", " ").split():
        try:
            out.append(int(tok))
        except ValueError:
            raise UserError(f"feature id {tok!r} is not an integer; give ids like 12, 40") from None
    return out


# ---------------------------------------------------------------- the setting the run stored for each target


def _read_json_or_empty(path: Path) -> dict:
    try:
        data = read_json(path, "JSON file")
    except UserError:
        return {}
    return data if isinstance(data, dict) else {}


def stored_settings(run: str | Path, hookpoint: str, sae_dir: str | Path | None = None) -> dict[str, dict]:
    """target -> the ablation setting the run stored for it at this hookpoint, with where it came from.

    In order of precedence: the SAE folder's tuned.json (`saeuron evaluate --tune-seeds`), then
    the run's evaluations of this hookpoint (eval/*.json: the demo writes one per target, with
    the fixed setting it used; an unlearned-model folder's evaluation counts for each target's
    first site). Each setting holds the keys of `ablate.SETTING_DEFAULTS`, the selection and
    firing rules it was made with, and `source` (a short phrase for the page).
    """
    from .ablate import SETTING_DEFAULTS, TUNED_FILE

    def setting(record: dict, source: str) -> dict | None:
        if not isinstance(record, dict) or not all(isinstance(record.get(k), (int, float)) for k in ("percentile", "multiplier")):
            return None
        out = {k: float(record.get(k) if isinstance(record.get(k), (int, float)) else d) for k, d in SETTING_DEFAULTS.items()}
        out.update(selection=str(record.get("selection") or "saeuron"), firing=str(record.get("firing") or "mean"), source=source)
        return out

    found: dict[str, dict] = {}
    eval_dir = Path(run) / "eval"
    files = sorted(eval_dir.glob("*.json"), key=lambda p: (p.name == "results.json", p.name)) if eval_dir.is_dir() else []
    for path in reversed(files):  # per-target files win over the merged results.json
        data = _read_json_or_empty(path)
        config = data.get("config") if isinstance(data.get("config"), dict) else {}
        if config.get("hookpoint") not in (hookpoint, None) or not isinstance(data.get("targets"), dict):
            continue
        for target, record in data["targets"].items():
            # an unlearned-model folder's evaluation names each target's sites, the first of which its setting is of
            if config.get("hookpoint") is None and str(record.get("hookpoint", "")).split(",")[0] != hookpoint:
                continue
            s = setting({**record, "selection": config.get("selection"), "firing": config.get("firing")},
                        f"the run's evaluation ({path.relative_to(run)})")
            if s is not None:
                found[target] = s
    if sae_dir is not None:
        for target, record in _read_json_or_empty(Path(sae_dir) / TUNED_FILE).items():
            seeds = record.get("tune_seeds") if isinstance(record, dict) else None
            s = setting(record, f"tuned ({TUNED_FILE}" + (f", seeds {seeds})" if seeds else ")"))
            if s is not None:
                found[target] = s
    return found


def setting_for(stored: dict[str, dict], target: str) -> dict:
    """The stored setting of a target, else the defaults (`ablate.SETTING_DEFAULTS`, source 'default')."""
    from .ablate import SETTING_DEFAULTS

    return stored.get(target) or {**SETTING_DEFAULTS, "selection": "saeuron", "firing": "mean", "source": "default"}


def build_plan(scores, settings: dict[str, dict], features: list[int] = (), feature_multiplier: float = -1.0,
               step_window: tuple[int, int] | None = None):
    """One plan erasing each target with its own setting (see `stored_settings`) and hand-picked features."""
    from .ablate import SETTING_DEFAULTS, merge_plans, plan_for_setting

    plans = [plan_for_setting(scores, t, {k: p[k] for k in SETTING_DEFAULTS if k in p}, p.get("selection", "saeuron"),
                              p.get("firing", "mean"), step_window) for t, p in settings.items()]
    if features:
        if feature_multiplier >= 0:
            raise UserError(f"the ablation multiplier must be negative (SAeUron uses -1 ... -30), got {feature_multiplier}")
        plans.append(manual_plan(scores, list(features), feature_multiplier, step_window))
    return merge_plans(*plans)


def feature_from_selection(selection, feature_ids) -> int | None:
    """The feature of the row clicked in a dataframe (its selection state), or None when no row is selected."""
    try:
        rows = selection["selection"]["rows"]
    except (KeyError, TypeError):
        return None
    if not rows or not 0 <= int(rows[0]) < len(feature_ids):
        return None
    return int(feature_ids[int(rows[0])])


# ---------------------------------------------------------------- the "everywhere" grid


@dataclass
class GridSpec:
    """The prompts of a whole grid, in row-major order, with its row and column labels (when it is a full product)."""

    prompts: list[str]
    truth: list[dict]  # per image, {kind: value}
    n_cols: int
    row_labels: list[str] = field(default_factory=list)
    col_labels: list[str] = field(default_factory=list)
    row_kind: str = ""
    col_kind: str = ""


def grid_spec(concept_set) -> GridSpec:
    """The grid of a labelled prompt set: rows = values of the first kind, columns = the last kind's (minicanvas:
    styles x objects). A set that is not a full product is tiled in its own order, without labels."""
    rows = list(concept_set.rows)
    kinds = list(concept_set.kinds)
    if not rows:
        raise UserError("the run's prompt set holds no labelled prompts to lay out as a grid")
    if len(kinds) >= 2:
        rk, ck = kinds[0], kinds[-1]
        rv = list(dict.fromkeys(r[rk] for r in rows if r.get(rk)))
        cv = list(dict.fromkeys(r[ck] for r in rows if r.get(ck)))
        cell = {(r.get(rk), r.get(ck)): r for r in rows}
        if all((a, b) in cell for a in rv for b in cv):
            chosen = [cell[(a, b)] for a in rv for b in cv]
            return GridSpec([r["prompt"] for r in chosen], [dict(r) for r in chosen], len(cv), rv, cv, rk, ck)
    n_cols = max(1, min(10, int(np.ceil(np.sqrt(len(rows))))))
    return GridSpec([r["prompt"] for r in rows], [dict(r) for r in rows], n_cols)


def labelled_grid(images_uint8: np.ndarray, spec: GridSpec, scale: int = 3, marks: list[bool] | None = None) -> np.ndarray:
    """Tile images (N x H x W x 3 uint8) as the spec lays them out, with row and column labels, and a red frame
    around each marked image."""
    from PIL import Image, ImageDraw, ImageFont

    n, h, w, _ = images_uint8.shape
    h, w = h * scale, w * scale
    pad = 2
    n_cols = spec.n_cols
    n_rows = -(-n // n_cols)
    try:
        font = ImageFont.load_default(size=max(11, 7 * scale))
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    left = max([int(font.getlength(t)) for t in spec.row_labels] + [0]) + 8 if spec.row_labels else 0
    top = int(font.size * 1.6) if spec.col_labels and hasattr(font, "size") else (14 if spec.col_labels else 0)
    canvas = Image.new("RGB", (left + n_cols * (w + pad) + pad, top + n_rows * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, img in enumerate(images_uint8):
        r, c = divmod(i, n_cols)
        x, y = left + pad + c * (w + pad), top + pad + r * (h + pad)
        canvas.paste(Image.fromarray(img).resize((w, h), Image.NEAREST), (x, y))
        if marks is not None and marks[i]:
            draw.rectangle([x, y, x + w - 1, y + h - 1], outline=(230, 0, 0), width=3)
    for c, label in enumerate(spec.col_labels):
        x = left + pad + c * (w + pad) + w / 2
        text = label if font.getlength(label) <= w else label[: max(1, int(len(label) * w / font.getlength(label)) - 1)] + "."
        draw.text((x - font.getlength(text) / 2, max(1, top // 5)), text, fill="black", font=font)
    for r, label in enumerate(spec.row_labels):
        draw.text((4, top + pad + r * (h + pad) + (h - getattr(font, "size", 10)) / 2), label, fill="black", font=font)
    return np.asarray(canvas)


def generate_in_chunks(make, prompts: list[str], seeds: list[int], chunk: int = 10, progress=None) -> np.ndarray:
    """uint8 images of every (prompt, seed) pair, generated `chunk` at a time by `make(prompts, seeds)` (a tensor
    N x 3 x H x W in [0, 1]); `progress(done, total)` after each chunk."""
    from .pipelines import to_uint8

    out = []
    for start in range(0, len(prompts), chunk):
        out.append(to_uint8(make(prompts[start:start + chunk], seeds[start:start + chunk])))
        if progress is not None:
            progress(min(start + chunk, len(prompts)), len(prompts))
    return np.concatenate(out)


def grid_summary(spec: GridSpec, targets: list[str], before: list[dict], after: list[dict]) -> list[dict]:
    """Per erased target, counted over the grid's images from the judge's labels (before / after):
    its images still recognised as it (UA's complement), other images of its kind keeping their label (IRA),
    and images of no target keeping their labels of the other kinds (CRA)."""
    from .concept_set import Concept

    erased = [Concept.parse(t) for t in targets]
    free = [i for i, truth in enumerate(spec.truth) if not any(truth.get(e.kind) == e.value for e in erased)]

    def count(labels, idx, kind) -> str:
        idx = [i for i in idx if spec.truth[i].get(kind)]
        return f"{sum(labels[i].get(kind) == spec.truth[i][kind] for i in idx)}/{len(idx)}"

    rows = []
    for c in erased:
        mine = [i for i, truth in enumerate(spec.truth) if truth.get(c.kind) == c.value]
        others = sorted({k for i in free for k, v in spec.truth[i].items() if k not in ("prompt", c.kind) and v})
        row = {"target": str(c), "recognised as it (before → after)": f"{count(before, mine, c.kind)} → {count(after, mine, c.kind)}",
               f"other {c.kind}s kept": f"{count(before, free, c.kind)} → {count(after, free, c.kind)}"}
        for k in others:
            row[f"{k} kept"] = f"{count(before, free, k)} → {count(after, free, k)}"
        rows.append(row)
    return rows


def judge_marks(spec: GridSpec, labels: list[dict], kinds: list[str]) -> list[bool]:
    """Per image, whether the judge's label of any of these kinds differs from its prompt's."""
    return [any(t.get(k) and lab.get(k) != t[k] for k in kinds) for t, lab in zip(spec.truth, labels)]


# ---------------------------------------------------------------- unlearned models of the run


def unlearned_folders(run: str | Path) -> list[Path]:
    """The run's unlearned-model folders (`saeuron unlearn`), [] when there are none or saeuron.unlearn is absent."""
    try:
        from .unlearn import find_unlearned
    except ImportError:
        return []
    try:
        return list(find_unlearned(Path(run)))
    except (UserError, OSError):
        return []


# ---------------------------------------------------------------- CLI


def run_dir_from_argv(argv: list[str] | None = None) -> str:
    """The run directory the app opens: first argument after `--`, else $SAEURON_RUN, else activations/demo."""
    argv = sys.argv[1:] if argv is None else argv
    args = [a for a in argv if not a.startswith("-")]
    return args[0] if args else os.environ.get("SAEURON_RUN", DEFAULT_RUN)


def _cmd_app(args) -> int:
    from .cli_args import device_from_args
    from .devices import dtype_name

    if not APP_FILE.exists():
        raise UserError(f"the app file {str(APP_FILE)!r} is missing (is saeuron installed from a checkout?)")
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port {args.port} is not a TCP port (1-65535)")
    device, dtype = device_from_args(args)  # checked here: the app reads them from the environment
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP_FILE), "--server.port", str(args.port),
           "--server.address", args.address, "--browser.gatherUsageStats", str(bool(args.usage_stats)).lower()]
    if args.headless:
        cmd += ["--server.headless", "true"]
    cmd += ["--", str(Path(args.run_dir).resolve())]
    env = {**os.environ, "SAEURON_DEVICE": str(device), "SAEURON_DTYPE": dtype_name(dtype)}
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 130


def register_cli(sub) -> None:
    """Add `saeuron app [RUN_DIR]`."""
    from .cli import command_help
    from .cli_args import add_device_args, bounded

    p = sub.add_parser("app", help=command_help("app"))
    p.add_argument("run_dir", nargs="?", default=os.environ.get("SAEURON_RUN", DEFAULT_RUN),
                   help=f"run directory (default $SAEURON_RUN or {DEFAULT_RUN})")
    p.add_argument("--port", type=bounded(int, 1, 65535), default=8501)
    p.add_argument("--address", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only). 0.0.0.0 lets anyone who reaches the "
                        "machine browse the run and make it generate; prefer an SSH tunnel (see the README)")
    p.add_argument("--usage-stats", action="store_true", help="let Streamlit send its usage statistics (off by default)")
    p.add_argument("--headless", action="store_true", help="do not open a browser")
    add_device_args(p)
    p.set_defaults(func=_cmd_app)
