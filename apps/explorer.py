"""saeuron explorer: browse an SAE's features, concept scores, and ablate/steer concepts live.

Run: `saeuron app RUN_DIR`, `streamlit run apps/explorer.py -- RUN_DIR`, or set $SAEURON_RUN.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import streamlit as st

from saeuron.app import (
    build_plan, feature_from_selection, feature_stats, feature_table, generate_in_chunks, grid_spec, grid_summary,
    inspect_run, judge_marks, labelled_grid, overlay, parse_feature_ids, run_dir_from_argv, sae_capture, sample_steered,
    setting_for, sidebar_hookpoints, spatial_map, stored_settings, unlearned_folders, upscale,
)
from saeuron.errors import UserError

st.set_page_config(page_title="saeuron explorer", layout="wide")
PAGES = ("Features", "Concepts", "Ablate", "Run")


# ---------------------------------------------------------------- cached loaders


def placement() -> tuple[str, str]:
    """(device, dtype) from `saeuron app --device/--dtype` (passed as SAEURON_DEVICE / SAEURON_DTYPE)."""
    import os

    return os.environ.get("SAEURON_DEVICE", "auto"), os.environ.get("SAEURON_DTYPE", "float32")


@st.cache_resource(show_spinner="loading the pipeline")
def get_pipeline(model: str):
    from saeuron.pipelines import load_pipeline

    device, dtype = placement()
    return load_pipeline(model, dtype, device)


@st.cache_resource(show_spinner="loading the SAE")
def get_sae(folder: str, hookpoint: str, mtime: float = 0.0):
    from saeuron.devices import resolve_device, resolve_dtype
    from saeuron.sae import load_sae

    device, dtype = placement()
    return load_sae(folder, hookpoint=hookpoint, device=resolve_device(device), dtype=resolve_dtype(dtype)).eval()


@st.cache_resource(show_spinner="reading concept scores")
def get_scores(path: str, mtime: float):
    from saeuron.concepts import ConceptScores

    return ConceptScores.load(Path(path))


@st.cache_resource(show_spinner="reading the cache")
def get_store(path: str, mtime: float):
    from saeuron.cache import open_store

    return open_store(path)


@st.cache_resource(show_spinner="encoding a sample of cache rows with the SAE")
def get_stats(cache: str, folder: str, hookpoint: str, max_rows: int, mtime: float):
    return feature_stats(cache, hookpoint, get_sae(folder, hookpoint, _folder_mtime(folder)), max_rows=max_rows)


@st.cache_data(show_spinner="generating images", max_entries=256)
def generate(model: str, prompts: tuple[str, ...], seeds: tuple[int, ...], steps: int, cfg: float) -> np.ndarray:
    from saeuron.pipelines import SamplerConfig, sample, to_uint8

    return to_uint8(sample(get_pipeline(model), list(prompts), list(seeds), SamplerConfig(steps=steps, cfg=cfg)))


def _mtime(p) -> float:
    return Path(p).stat().st_mtime if p and Path(p).exists() else 0.0


def _folder_mtime(folder) -> float:
    """Newest file time in an SAE folder, so a retrained SAE is reloaded."""
    return max((p.stat().st_mtime for p in Path(folder).iterdir() if p.is_file()), default=0.0)


def is_minicanvas(model: str) -> bool:
    return str(model) == "minicanvas"


def labels_of(images_uint8: np.ndarray) -> list:
    import torch

    from saeuron.minicanvas.classifier import classify

    return classify(torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 255)


# ---------------------------------------------------------------- sidebar: run, hookpoint, page


if "run_dir" not in st.session_state:
    # `streamlit run apps/explorer.py -- RUN_DIR` sets sys.argv to [this file, RUN_DIR]; elsewhere (AppTest) argv is not ours
    ours = bool(sys.argv) and Path(sys.argv[0]).name == Path(__file__).name
    st.session_state.run_dir = run_dir_from_argv(sys.argv[1:] if ours else [])
st.sidebar.title("saeuron explorer")
run_dir = st.sidebar.text_input("Run directory", key="run_dir")
page = st.sidebar.radio("Page", PAGES, key="page")
info = inspect_run(run_dir)

st.title(f"saeuron explorer — {page}")
if info.missing:
    st.warning("This run directory is incomplete:\n\n" + "\n".join(f"- {m}" for m in info.missing))

store = None
if info.cache is not None:
    try:
        store = get_store(str(info.cache), _mtime(info.cache))
    except (UserError, OSError, KeyError) as err:
        st.error(f"cannot read the activation cache {str(info.cache)!r}: {err}")

hookpoints = sidebar_hookpoints(info)
hookpoint = st.sidebar.selectbox("Hookpoint (SAE)", hookpoints, key="hookpoint") if hookpoints else None
model = (store.config.get("model", "minicanvas") if store else "minicanvas")
cache_steps = int(store.config.get("steps", 25)) if store else 25
if store and store.config.get("cfg") is not None:
    cache_cfg = float(store.config["cfg"])
else:
    from saeuron.pipelines import default_guidance

    cache_cfg = default_guidance(get_pipeline(model))
st.sidebar.caption(f"model: {model} · cache steps: {cache_steps} · CFG {cache_cfg}")


def need(*pieces: str) -> bool:
    """Stop the page with an error naming the command that makes each missing piece."""
    problems = []
    run = info.run
    if "cache" in pieces and store is None:
        problems.append(f"the activation cache ({run}/cache.h5) is missing or unreadable: "
                        f"`saeuron cache --minicanvas --hookpoints HOOKPOINT --out {run}/cache.h5`")
    if "sae" in pieces and hookpoint is None:
        problems.append(f"no SAE in {run}/saes/: `saeuron train --cache {run}/cache.h5 --hookpoint HOOKPOINT --out {run}/saes/HOOKPOINT`")
    if "scores" in pieces and hookpoint is not None and hookpoint not in info.concepts:
        problems.append(f"no concept scores for {hookpoint!r}: `saeuron score --cache {run}/cache.h5 --sae {info.saes[hookpoint]}`")
    for p in problems:
        st.error(f"Missing: {p}")
    return not problems


def load_sae_or_error():
    try:
        return get_sae(str(info.saes[hookpoint]), hookpoint, _folder_mtime(info.saes[hookpoint]))
    except (UserError, OSError, ValueError) as err:
        st.error(f"cannot load the SAE of {hookpoint!r}: {err}")
        return None


def load_scores_or_error():
    if hookpoint not in info.concepts:
        return None
    try:
        return get_scores(str(info.concepts[hookpoint]), _mtime(info.concepts[hookpoint]))
    except (UserError, OSError) as err:
        st.error(f"cannot read concept scores of {hookpoint!r}: {err}")
        return None


def run_settings() -> dict[str, dict]:
    """target -> the ablation setting this run stored at the chosen hookpoint (tuned.json, else its evaluations)."""
    if hookpoint is None:
        return {}
    return stored_settings(info.run, hookpoint, info.saes.get(hookpoint))


def open_feature() -> None:
    """A row of the Concepts page's feature table was clicked: show that feature on the Features page."""
    f = feature_from_selection(st.session_state.get("concept_top"), st.session_state.get("_concept_ids", []))
    if f is not None:
        st.session_state.feature = f
        st.session_state.page = "Features"


def prompt_text(i: int) -> str:
    return store.prompts[i]["prompt"]


# ---------------------------------------------------------------- Features page


def features_page() -> None:
    if not need("cache", "sae"):
        return
    if hookpoint not in store.widths:
        st.error(f"the SAE's hookpoint {hookpoint!r} is not in the cache; it holds {', '.join(store.hookpoints)}")
        return
    sae = load_sae_or_error()
    if sae is None:
        return
    if int(sae.cfg.d_in) != int(store.widths[hookpoint]):
        st.error(f"the SAE in {str(info.saes[hookpoint])!r} has input width {sae.cfg.d_in}, but hookpoint {hookpoint!r} "
                 f"in the cache has width {store.widths[hookpoint]}; train an SAE on this cache: "
                 f"`saeuron train --cache {info.cache} --hookpoint {hookpoint} --out {info.saes[hookpoint]}`")
        return
    scores = load_scores_or_error()
    if scores is None:
        st.info("No concept scores yet: the table has no concept columns.")
    max_rows = st.sidebar.number_input("Cache rows to sample", 1_000, 2_000_000, 60_000, step=10_000, key="max_rows")
    try:
        stats = get_stats(str(info.cache), str(info.saes[hookpoint]), hookpoint, int(max_rows),
                          _mtime(info.cache) + _folder_mtime(info.saes[hookpoint]))
        table = feature_table(stats, scores)
    except UserError as err:
        st.error(str(err))
        return
    st.caption(f"Statistics over {stats.n_rows:,} sampled token rows ({len(stats.groups['step'])} image-steps) "
               f"of {store.rows[hookpoint]:,}; SAE with {len(table)} features.")
    c1, c2, c3, c4 = st.columns(4)
    min_freq = c1.number_input("Min frequency", 0.0, 1.0, 0.0, step=0.01, format="%.4f", key="min_freq")
    concept_filter = c2.text_input("Top concept contains", "", key="concept_filter")
    sort_by = c3.selectbox("Sort by", [c for c in table.columns if c != "top_concept"], index=1, key="sort_by")
    n_show = c4.number_input("Rows shown", 5, 10_000, 50, key="n_show")
    view = table[table["frequency"] >= min_freq]
    if concept_filter and "top_concept" in view:
        view = view[view["top_concept"].str.contains(concept_filter, regex=False)]
    view = view.sort_values(sort_by, ascending=sort_by == "feature").head(int(n_show))
    st.session_state["_table_ids"] = view["feature"].tolist()  # what the clicked row number means
    if "feature" not in st.session_state or not 0 <= int(st.session_state.feature) < len(table):
        st.session_state.feature = int(view["feature"].iloc[0]) if len(view) else 0
    # a typed id clears the row selection: the table's key changes (a selection cannot be set from the script)
    st.dataframe(view, hide_index=True, width="stretch", height=320, key=f"feature_table:{st.session_state.get('_typed', 0)}",
                 on_select=pick_from_table, selection_mode="single-row", column_config=FEATURE_COLUMNS)
    c1, c2 = st.columns([1, 3])
    c2.caption(f"{len(view)} features shown · click a row to open its feature, or type its id")
    feature = c1.number_input("Feature id", 0, len(table) - 1, key="feature", on_change=typed_feature)
    feature_detail(int(feature), sae, stats, scores)


FEATURE_COLUMNS = {"feature": st.column_config.NumberColumn("feature", format="%d"),
                   "frequency": st.column_config.NumberColumn(format="%.4f"),
                   "mean_act": st.column_config.NumberColumn(format="%.4f"),
                   "max_act": st.column_config.NumberColumn(format="%.3f"),
                   "top_score": st.column_config.NumberColumn(format="%.4f")}


def typed_feature() -> None:
    st.session_state._typed = st.session_state.get("_typed", 0) + 1


def pick_from_table() -> None:
    """A row of the feature table was clicked: open its feature (runs before the page, so the id box follows)."""
    key = f"feature_table:{st.session_state.get('_typed', 0)}"
    f = feature_from_selection(st.session_state.get(key), st.session_state.get("_table_ids", []))
    if f is not None:
        st.session_state.feature = f


def categorical(fig, *axes: str):
    """Feature ids and timesteps are names, not quantities: plot them on category axes, in the order given."""
    for axis in axes:
        getattr(fig, f"update_{axis}axes")(type="category")
    return fig


def feature_detail(feature: int, sae, stats, scores) -> None:
    import plotly.express as px
    import plotly.graph_objects as go

    row = {"freq": float(stats.freq[feature]), "mean": float(stats.mean_act[feature]), "max": float(stats.max_act[feature])}
    st.subheader(f"Feature {feature}")
    st.markdown(f"frequency **{row['freq']:.4f}** · mean activation **{row['mean']:.4f}** · max activation **{row['max']:.4f}**")

    n_top = st.slider("Top images", 1, 16, 6, key="n_top")
    tops = stats.top_images(feature, n_top)
    if not tops:
        st.info(f"Feature {feature} never fires in the sampled rows.")
    else:
        try:
            imgs = generate(model, tuple(prompt_text(t["prompt"]) for t in tops), tuple(t["seed"] for t in tops), cache_steps, cache_cfg)
        except UserError as err:
            st.error(f"cannot regenerate the top images: {err}")
            imgs = None
        if imgs is not None:
            vmax = max(t["max_act"] for t in tops)
            cols = st.columns(min(len(tops), 6))
            for k, t in enumerate(tops):
                heat = spatial_map(info.cache, hookpoint, sae, t["start"], t["stop"], feature)
                col = cols[k % len(cols)]
                col.image(upscale(overlay(imgs[k], heat, vmax=vmax)))
                col.caption(f"{prompt_text(t['prompt'])} · seed {t['seed']} · max {t['max_act']:.3f} "
                            f"at step {t['step']} (t={t['timestep']})")
    c1, c2 = st.columns(2)
    vals = stats.values(feature)
    if len(vals):
        c1.plotly_chart(px.histogram(x=vals, nbins=40, labels={"x": "activation"}, title="Activation histogram (nonzero)"),
                        key="hist")
    steps, ts, means = stats.step_profile(feature)
    fig = go.Figure(go.Scatter(x=ts, y=means, mode="lines+markers", text=[f"step {s}" for s in steps]))
    fig.update_layout(title="Mean activation over timesteps", xaxis_title="timestep", yaxis_title="mean activation",
                      xaxis_autorange="reversed")
    c2.plotly_chart(fig, key="profile")
    if scores is not None and scores.mean_acts.shape[2] > feature:
        c1, c2 = st.columns(2)
        per_concept = scores.mean_acts[:, :, feature].mean(1)
        fig = px.bar(x=scores.concepts, y=per_concept, labels={"x": "concept", "y": "mean activation"},
                     title="Mean activation per concept (over steps)")
        c1.plotly_chart(fig, key="per_concept")
        fig = px.imshow(scores.mean_acts[:, :, feature], x=[str(int(t)) for t in scores.timesteps], y=scores.concepts,
                        aspect="auto", labels={"x": "timestep", "y": "concept", "color": "mean act"},
                        title="Mean activation per concept and timestep")
        c2.plotly_chart(categorical(fig, "x", "y"), key="per_concept_t")
        top_c = int(np.argmax(scores.scores[:, :, feature].max(1)))
        st.caption(f"top concept of feature {feature}: {scores.concepts[top_c]} "
                   f"(best score {float(scores.scores[top_c, :, feature].max()):.4f})")


# ---------------------------------------------------------------- Concepts page


def concepts_page() -> None:
    import plotly.express as px
    import pandas as pd

    if not need("sae", "scores"):
        return
    scores = load_scores_or_error()
    if scores is None:
        return
    c1, c2 = st.columns([1, 3])
    kind = c1.selectbox("Kind", ["every kind", *scores.kinds], key="concept_kind")
    concept = c2.selectbox("Concept", [x for x in scores.concepts if kind == "every kind" or x.startswith(kind + ":")], key="concept")
    c = scores.index(concept)
    setting = setting_for(run_settings(), concept)
    col1, col2 = st.columns(2)
    top_n = col1.slider("Features in the heatmap", 5, min(200, scores.scores.shape[2]), min(30, scores.scores.shape[2]), key="heat_n")
    percentile = col2.number_input("Selection percentile", 0.0, 99.999, float(setting["percentile"]), step=0.1, format="%.3f",
                                   key=f"concept_percentile:{concept}",
                                   help=f"starts at the run's setting for {concept} ({setting['source']})")
    s_tf = scores.scores[c]
    top = np.argsort(-s_tf.max(0), kind="stable")[:top_n]
    steps = scores.steps if scores.steps is not None else np.arange(len(scores.timesteps))
    fig = px.imshow(s_tf[:, top], x=[str(f) for f in top], y=[f"t={t} (step {s})" for t, s in zip(scores.timesteps, steps)],
                    color_continuous_scale="RdBu_r", color_continuous_midpoint=0, aspect="auto",
                    labels={"x": "feature", "y": "timestep", "color": "score"},
                    title=f"Scores of {concept}: top {len(top)} features, best first")
    st.plotly_chart(categorical(fig, "x", "y"), key="concept_heat")
    from saeuron.concepts import select_features

    try:
        chosen = select_features(s_tf, percentile=float(percentile))
    except UserError as err:
        st.error(str(err))
        return
    st.dataframe(pd.DataFrame({"step": steps, "timestep": scores.timesteps, "n_selected": [len(x) for x in chosen],
                               "features": [", ".join(map(str, x[:20])) for x in chosen]}), hide_index=True, key="concept_steps")
    st.caption(f"best feature overall: {int(top[0])} (score {float(s_tf.max(0)[top[0]]):.4f}) · "
               f"images of this concept in the cache: {int(scores.n_images[c])}")
    dom = scores.dominance(c)
    best_t = s_tf[:, top].argmax(0)
    tops = pd.DataFrame({"feature": top.astype(int), "best score": s_tf.max(0)[top],
                         "at step": steps[best_t].astype(int),
                         "mean act there": scores.mean_acts[c, best_t, top],
                         "dominance there": dom[best_t, top],
                         "steps selected": [sum(int(f) in set(x.tolist()) for x in chosen) for f in top]})
    st.session_state["_concept_ids"] = tops["feature"].tolist()
    st.markdown(f"**Top features of {concept}** — click a row to open the feature on the Features page")
    st.dataframe(tops, hide_index=True, key="concept_top", on_select=open_feature, selection_mode="single-row",
                 column_config={"best score": st.column_config.NumberColumn(format="%.4f"),
                                "mean act there": st.column_config.NumberColumn(format="%.4f"),
                                "dominance there": st.column_config.NumberColumn(format="%.2f")})
    if store is None:
        return
    kind, _, name = concept.partition(":")
    examples = [p["prompt"] for p in store.prompts if p.get(kind) == name][:4]
    if examples and st.checkbox("Show example images", value=True, key="concept_examples"):
        try:
            imgs = generate(model, tuple(examples), tuple([0] * len(examples)), cache_steps, cache_cfg)
        except UserError as err:
            st.error(str(err))
            return
        cols = st.columns(len(examples))
        for k, (p, im) in enumerate(zip(examples, imgs)):
            cols[k].image(upscale(im))
            cols[k].caption(f"{p} · seed 0")


# ---------------------------------------------------------------- Ablate page


NO_LABEL = "(none)"


def pick_prompt(cs) -> str:
    """A prompt of the run's labelled prompt set, chosen by one value per concept kind, or typed."""
    kinds = list(cs.kinds) if cs is not None else []
    cols = st.columns(len(kinds) + 1)
    chosen = {}
    for col, kind in zip(cols, kinds):
        values = list(dict.fromkeys(r[kind] for r in cs.rows if r[kind]))  # in the set's order
        options = values + ([NO_LABEL] if any(not r[kind] for r in cs.rows) else [])
        pick = col.selectbox(kind.capitalize(), options, key=f"ab_{kind}")
        chosen[kind] = "" if pick == NO_LABEL else pick
    custom = cols[-1].text_input("or a free prompt" if kinds else "Prompt", "", key="ab_prompt").strip()
    if custom or cs is None:
        return custom
    match = next((r["prompt"] for r in cs.rows if all(r[k] == v for k, v in chosen.items())), None)
    if match is None:
        st.info("no prompt of the run has these labels; type a prompt")
        return ""
    return match


def run_concept_set():
    """The labelled prompts the Ablate page offers: on minicanvas every prompt of the world, else the cache's."""
    if is_minicanvas(model):  # every prompt of the world can be drawn, not only the cached ones
        from saeuron.concept_set import ConceptSet

        return ConceptSet.minicanvas()
    return store.concept_set if store else None


def ablation_settings(scores, concepts: list[str]) -> dict[str, dict]:
    """One row of inputs per target, starting at the setting the run stored for it (tuned, or its evaluation's)."""
    stored = run_settings()
    settings = {}
    if not concepts:
        return settings
    widths = [2, 1, 1, 1, 1, 3]
    for col, head in zip(st.columns(widths), ("target", "percentile", "multiplier", "min. dominance", "start", "starting point")):
        col.markdown(f"**{head}**")
    for t in concepts:
        p = setting_for(stored, t)
        cols = st.columns(widths, vertical_alignment="center")
        cols[0].markdown(f"`{t}`")
        key = f"{hookpoint}:{t}"
        pct = cols[1].number_input(f"Percentile of {t}", 0.0, 99.999, float(p["percentile"]), step=0.1, format="%.3f",
                                   key=f"ab_pct:{key}", label_visibility="collapsed")
        mult = cols[2].number_input(f"Multiplier of {t}", -100.0, -0.001, float(min(p["multiplier"], -0.001)), step=1.0,
                                    key=f"ab_mult:{key}", label_visibility="collapsed")
        dom = cols[3].number_input(f"Minimum dominance of {t}", 0.0, 100.0, float(p["dominance"]), step=0.5,
                                   key=f"ab_dom:{key}", label_visibility="collapsed",
                                   help="keep only features the concept fires at least this many times as strongly as any other (0: off)")
        start = cols[4].number_input(f"Start of {t}", 0.0, 0.95, float(p["start"]), step=0.05, format="%.2f",
                                     key=f"ab_start:{key}", label_visibility="collapsed",
                                     help="fraction of the denoising steps left unablated at the beginning (0: every step, SAeUron)")
        rules = "" if (p["selection"], p["firing"]) == ("saeuron", "mean") else f" · selection {p['selection']}, firing {p['firing']}"
        cols[5].caption(f"{p['source']}: {p['percentile']:g} / {p['multiplier']:g} / {p['dominance']:g} / {p['start']:g}{rules}")
        settings[t] = {**p, "percentile": float(pct), "multiplier": float(mult), "dominance": float(dom), "start": float(start)}
    return settings


def eval_seed() -> int:
    """The run's first evaluation seed (what its report shows), else 0."""
    try:
        seeds = json.loads(info.eval_results.read_text())["config"]["seeds"] if info.eval_results else []
        return int(seeds[0]) if seeds else 0
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return 0


def ablate_page() -> None:
    if not need("sae"):
        return
    sae = load_sae_or_error()
    if sae is None:
        return
    scores = load_scores_or_error()
    concept_set = run_concept_set()
    prompt = pick_prompt(concept_set)
    c1, c2, c3 = st.columns(3)
    seed = c1.number_input("Seed", 0, 2**31 - 1, eval_seed(), key="ab_seed",
                           help="starts at the run's first evaluation seed (eval/results.json), else 0")
    steps = c2.number_input("Sampler steps", 1, 200, 25, key="ab_steps")
    cfg = c3.number_input("CFG scale", 0.0, 30.0, cache_cfg, key="ab_cfg")
    st.caption(f"The concept scores cover {cache_steps} cached steps; other step counts use the cached step of nearest timestep.")
    sampling = (prompt, int(seed), int(steps), float(cfg))

    st.subheader("Ablation (SAeUron)")
    options = scores.concepts if scores is not None else []
    stored = [t for t in run_settings() if t in options]
    concepts = st.multiselect("Concepts to ablate", options, default=stored, key=f"ab_concepts:{hookpoint}",
                              help="the run's own targets at this hookpoint are chosen to start with")
    settings = ablation_settings(scores, concepts)
    c1, c2, c3 = st.columns([2, 1, 2])
    feats_text = c1.text_input("and/or feature ids (comma separated)", "", key="ab_features")
    f_mult = c2.number_input("their multiplier", -100.0, 100.0, -1.0, key="ab_mult")
    window = c3.slider("Cached step window [from, to)", 0, cache_steps, (0, cache_steps), key="ab_window")
    what = (settings, feats_text, float(f_mult), tuple(window))
    c1, c2, _ = st.columns([1, 2, 3])
    if c1.button("Run ablation", key="ab_run", type="primary"):
        st.session_state.ab_result = None
        try:
            st.session_state.ab_result = run_ablation(sae, scores, *sampling, *what)
        except UserError as err:
            st.error(str(err))
    grid_label = "Erase everywhere: " + ("the world's whole grid" if is_minicanvas(model) else "every labelled prompt")
    if c2.button(grid_label, key="ab_grid", help="every prompt of the grid, this seed, before and after"):
        st.session_state.grid_result = None
        try:
            st.session_state.grid_result = run_grid_ablation(sae, scores, concept_set, *sampling[1:], *what)
        except UserError as err:
            st.error(str(err))
    show_result(st.session_state.get("ab_result"), "Ablated")
    show_grid(st.session_state.get("grid_result"))

    unlearned_section(concept_set, *sampling)

    st.subheader("Steering (turn one feature up)")
    c1, c2, c3, c4 = st.columns(4)
    s_feat = c1.number_input("Feature", 0, int(sae.W_dec.shape[0]) - 1, 0, key="st_feature")
    s_value = c2.number_input("Value", -1000.0, 1000.0, 10.0, key="st_value")
    s_mode = c3.selectbox("Mode", ["add", "scale"], key="st_mode")
    s_window = c4.slider("Sampler step window", 0, int(steps), (0, int(steps)), key="st_window")
    if st.button("Run steering", key="st_run"):
        st.session_state.st_result = None
        try:
            st.session_state.st_result = run_steering(sae, prompt, int(seed), int(steps), float(cfg), int(s_feat),
                                                      float(s_value), s_mode, tuple(s_window))
        except UserError as err:
            st.error(str(err))
    show_result(st.session_state.get("st_result"), "Steered")


def _sampler(steps: int, cfg: float, batch_size: int = 2):
    from saeuron.pipelines import SamplerConfig

    return SamplerConfig(steps=steps, cfg=cfg, batch_size=batch_size)


def make_plan(scores, settings: dict[str, dict], feats_text: str, f_mult: float, window):
    """The plan of the page's inputs, and a line saying what it erases (clear errors for bad inputs)."""
    features = parse_feature_ids(feats_text)
    if not settings and not features:
        raise UserError("pick at least one concept or feature id to ablate")
    if scores is None:
        raise UserError(f"ablation needs concept scores: `saeuron score --cache {info.run}/cache.h5 --sae {info.saes[hookpoint]}`")
    if features and f_mult >= 0:
        raise UserError(f"the ablation multiplier must be negative (SAeUron uses -1 ... -30), got {f_mult}")
    if window[0] >= window[1]:
        raise UserError(f"the step window {window} is empty; give from < to")
    plan = build_plan(scores, settings, features, f_mult, window)
    parts = [f"{t} ({p['percentile']:g} / {p['multiplier']:g}" + (f" / dominance {p['dominance']:g}" if p["dominance"] else "")
             + (f" / from {p['start']:g} of the steps)" if p.get("start") else ")") for t, p in settings.items()] + [f"feature {f}" for f in features]
    note = (f"ablated {', '.join(parts)} · {plan.n_features()} (step, feature) pairs over {len(plan.steps)} steps"
            + (f" · feature multiplier {f_mult:g}" if features else ""))
    return plan, note


def run_ablation(sae, scores, prompt, seed, steps, cfg, settings, feats_text, f_mult, window) -> dict:
    from saeuron.ablate import sample_with_ablation
    from saeuron.pipelines import to_uint8

    if not prompt:
        raise UserError("the prompt is empty; pick a style and object or type a prompt")
    plan, note = make_plan(scores, settings, feats_text, f_mult, window)
    pipe = get_pipeline(model)
    original = generate(model, (prompt,), (seed,), steps, cfg)
    edited = to_uint8(sample_with_ablation(pipe, sae, hookpoint, plan, [prompt], [seed], _sampler(steps, cfg),
                                           capture=sae_capture(info.saes[hookpoint])))
    return {"prompt": prompt, "seed": seed, "original": original[0], "edited": edited[0], "note": note}


# ---------------------------------------------------------------- the "everywhere" grid


@st.cache_resource
def base_grids() -> dict:
    """Base-model grids already rendered, by (model, prompts, seed, steps, cfg): the 'before' is drawn once."""
    return {}


def render_grid(spec, seed: int, steps: int, cfg: float, edit, what: str) -> dict:
    """The grid's images before (base model, cached) and after `edit(prompts, seeds)`, with a progress bar."""
    from saeuron.pipelines import sample

    pipe = get_pipeline(model)
    seeds = [int(seed)] * len(spec.prompts)
    key = (model, tuple(spec.prompts), int(seed), int(steps), float(cfg))
    cached = base_grids().get(key)
    total = len(spec.prompts) * (1 if cached is not None else 2)
    bar = st.progress(0.0, text=f"rendering the grid: 0/{total} images")

    def tick(offset):
        return lambda done, _n: bar.progress((offset + done) / total, text=f"rendering the grid: {offset + done}/{total} images")

    if cached is None:
        cached = generate_in_chunks(lambda p, s: sample(pipe, p, s, _sampler(steps, cfg, 10)), spec.prompts, seeds, progress=tick(0))
        if len(base_grids()) >= 8:
            base_grids().clear()
        base_grids()[key] = cached
    after = generate_in_chunks(edit, spec.prompts, seeds, progress=tick(total - len(spec.prompts)))
    bar.empty()
    out = {"spec": spec, "seed": int(seed), "before": cached, "after": after, "note": what, "targets": []}
    if is_minicanvas(model):
        out["labels"] = (labels_dicts(cached), labels_dicts(after))
    return out


def labels_dicts(images_uint8: np.ndarray) -> list[dict]:
    return [{"style": lab.style, "object": lab.object} for lab in labels_of(images_uint8)]


def run_grid_ablation(sae, scores, concept_set, seed, steps, cfg, settings, feats_text, f_mult, window) -> dict:
    from saeuron.ablate import sample_with_ablation

    if concept_set is None:
        raise UserError("the run has no labelled prompts to lay out as a grid (its cache is missing)")
    plan, note = make_plan(scores, settings, feats_text, f_mult, window)
    spec = grid_spec(concept_set)
    capture = sae_capture(info.saes[hookpoint])
    pipe = get_pipeline(model)
    res = render_grid(spec, seed, steps, cfg, lambda p, s: sample_with_ablation(pipe, sae, hookpoint, plan, p, s, _sampler(steps, cfg, 10),
                                                                               capture=capture), note)
    res["targets"] = list(settings)
    return res


def show_grid(res: dict | None, after_title: str = "after erasing") -> None:
    if not res:
        return
    import pandas as pd

    spec = res["spec"]
    st.markdown(f"**Everywhere** · {len(spec.prompts)} prompts · seed {res['seed']} · {res['note']}")
    labels = res.get("labels")
    marks = [judge_marks(spec, lab, ["style", "object"]) for lab in labels] if labels else [None, None]
    c1, c2 = st.columns(2)
    c1.image(labelled_grid(res["before"], spec, marks=marks[0]), caption="before (base model)")
    c2.image(labelled_grid(res["after"], spec, marks=marks[1]), caption=after_title)
    if labels:
        st.caption("red frame: the classifier does not see the prompt's style or object in the image")
        if res["targets"]:
            st.dataframe(pd.DataFrame(grid_summary(spec, res["targets"], *labels)), hide_index=True, key=f"grid_summary_{after_title}")


# ---------------------------------------------------------------- unlearned models of the run


@st.cache_resource(show_spinner="loading the unlearned model")
def get_unlearned(folder: str, mtime: float):
    from saeuron.unlearn import load_unlearned

    return load_unlearned(Path(folder), get_pipeline(model))


def unlearned_section(concept_set, prompt, seed, steps, cfg) -> None:
    """Base and unlearned images side by side, for any model `saeuron unlearn` wrote into the run (none: nothing shown)."""
    folders = unlearned_folders(info.run)
    if not folders:
        return
    st.subheader("Unlearned models of this run")
    choice = st.selectbox("Unlearned model", [str(f) for f in folders], format_func=lambda f: Path(f).name, key="ul_folder")
    try:
        model_obj = get_unlearned(choice, _folder_mtime(choice))
    except (UserError, OSError, ValueError) as err:
        st.error(f"cannot load the unlearned model in {choice!r}: {err}")
        return
    st.caption(str(model_obj.summary))
    c1, c2, _ = st.columns([1, 2, 3])
    pipe = get_pipeline(model)
    config = _sampler(int(steps), float(cfg), 10)
    if c1.button("Generate with it", key="ul_run"):
        st.session_state.ul_result = None
        try:
            if not prompt:
                raise UserError("the prompt is empty; pick a style and object or type a prompt")
            from saeuron.pipelines import to_uint8

            edited = to_uint8(model_obj.generate(pipe, [prompt], [int(seed)], config))
            st.session_state.ul_result = {"prompt": prompt, "seed": int(seed), "original": generate(model, (prompt,), (int(seed),), int(steps), float(cfg))[0],
                                          "edited": edited[0], "note": f"unlearned model {Path(choice).name}"}
        except UserError as err:
            st.error(str(err))
    if c2.button("Its whole grid", key="ul_grid_button"):
        st.session_state.ul_grid_result = None
        try:
            if concept_set is None:
                raise UserError("the run has no labelled prompts to lay out as a grid (its cache is missing)")
            res = render_grid(grid_spec(concept_set), seed, steps, cfg, lambda p, s: model_obj.generate(pipe, p, s, config),
                              f"unlearned model {Path(choice).name}")
            st.session_state.ul_grid_result = res
        except UserError as err:
            st.error(str(err))
    show_result(st.session_state.get("ul_result"), "Unlearned")
    show_grid(st.session_state.get("ul_grid_result"), "unlearned model")


def run_steering(sae, prompt, seed, steps, cfg, feature, value, mode, window) -> dict:
    from saeuron.pipelines import to_uint8

    if not prompt:
        raise UserError("the prompt is empty; pick a style and object or type a prompt")
    if window[0] >= window[1]:
        raise UserError(f"the step window {window} is empty; give from < to")
    pipe = get_pipeline(model)
    original = generate(model, (prompt,), (seed,), steps, cfg)
    edited = to_uint8(sample_steered(pipe, sae, hookpoint, feature, value, mode, [prompt], [seed], _sampler(steps, cfg), window,
                                     capture=sae_capture(info.saes[hookpoint])))
    return {"prompt": prompt, "seed": seed, "original": original[0], "edited": edited[0],
            "note": f"steered feature {feature} · {mode} {value} · steps {window[0]}..{window[1] - 1}"}


def show_result(res: dict | None, title: str) -> None:
    if not res:
        return
    st.caption(res["note"])
    c1, c2 = st.columns(2)
    caps = ["Original", title]
    labels = None
    if is_minicanvas(model):
        try:
            labels = labels_of(np.stack([res["original"], res["edited"]]))
        except UserError as err:
            st.warning(f"no classifier labels: {err}")
    for col, key, cap, k in zip((c1, c2), ("original", "edited"), caps, range(2)):
        text = f"{cap}: {res['prompt']} · seed {res['seed']}"
        if labels:
            lab = labels[k]
            text += f" → classifier: {lab.style} ({lab.style_prob:.2f}), {lab.object} ({lab.object_prob:.2f})"
        col.image(upscale(res[key], 256))
        col.markdown(text)


# ---------------------------------------------------------------- Run page


def run_page() -> None:
    st.markdown(f"**Run directory:** `{info.run}`")
    st.markdown(f"**Cache:** `{info.cache}`" if info.cache else "**Cache:** missing")
    if store is not None:
        st.markdown(f"model `{model}` · {len(store.prompts)} prompts · seeds {store.config.get('seeds')} · "
                    f"{cache_steps} steps · complete: {store.complete}")
        st.dataframe([{"hookpoint": h, "width": w, "rows": store.rows[h]} for h, w in store.widths.items()], hide_index=True)
    for hp, folder in info.saes.items():
        st.markdown(f"**SAE** `{hp}` in `{folder}` · concept scores: {'yes' if hp in info.concepts else 'missing'}")
        stored = stored_settings(info.run, hp, folder)
        if stored:
            st.dataframe([{"target": t, **{k: p[k] for k in ("percentile", "multiplier", "dominance", "start", "selection", "firing", "source")}}
                          for t, p in stored.items()], hide_index=True, key=f"stored_{hp}")
        metrics = folder / "metrics.json"
        if metrics.exists():
            try:
                st.json(json.loads(metrics.read_text()), expanded=False)
            except json.JSONDecodeError as err:
                st.error(f"{metrics} is not valid JSON: {err}")
    if info.eval_results:
        try:
            st.subheader("Evaluation")
            st.json(json.loads(info.eval_results.read_text()), expanded=False)
        except json.JSONDecodeError as err:
            st.error(f"{info.eval_results} is not valid JSON: {err}")
    if info.report:
        for png in sorted(info.report.glob("*.png"))[:6]:
            st.image(str(png), caption=png.name)


try:
    {"Features": features_page, "Concepts": concepts_page, "Ablate": ablate_page, "Run": run_page}[page]()
except UserError as err:
    st.error(str(err))
except Exception as err:  # a browser must not show a traceback for a bad value
    st.error(f"{type(err).__name__}: {err}")
