"""The Streamlit explorer (apps/explorer.py) driven headless with AppTest, and its data helpers (saeuron.app)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

APP = str(Path(__file__).resolve().parent.parent / "apps" / "explorer.py")
HP = "up_blocks.1.attentions.2"
TIMEOUT = 180


def build_app_run(run: Path, pipe) -> Path:
    """A small run: cache of 3 styles x 2 objects (seed 0, 4 steps), a hand-made TopK SAE, its concept scores.

    Built here rather than with `saeuron train` so the app's tests do not depend on the trainer.
    """
    import sae_lens

    from saeuron.cache import CacheConfig, cache_activations
    from saeuron.concepts import score_cache
    from saeuron.minicanvas.world import all_prompts
    from saeuron.sae import load_sae

    done = run / "ready"
    if done.exists():
        return run
    run.mkdir(parents=True, exist_ok=True)
    prompts = [r for r in all_prompts() if r["style"] in ("neon", "ocean", "lava") and r["object"] in ("star", "ring")]
    cache_activations(pipe, prompts, run / "cache.h5", CacheConfig(hookpoints=(HP,), seeds=(0,), steps=4, batch_size=6),
                      progress=False)
    sae_dir = run / "saes" / HP
    sae_dir.mkdir(parents=True)
    torch.manual_seed(0)
    sae = sae_lens.SAE.from_dict(sae_lens.TopKSAEConfig(d_in=64, d_sae=256, k=8).to_dict())
    sae.save_model(str(sae_dir))
    (sae_dir / "train_config.json").write_text(json.dumps({"hookpoint": HP}))
    (sae_dir / "metrics.json").write_text(json.dumps({"fvu": 0.5}))
    score_cache(run / "cache.h5", HP, load_sae(sae_dir, hookpoint=HP)).save(sae_dir / "concepts.h5")
    done.write_text("ok")
    return run


@pytest.fixture(scope="session")
def app_run(tmp_path_factory, minicanvas_pipe) -> Path:
    return build_app_run(tmp_path_factory.getbasetemp() / "app_run", minicanvas_pipe)


def _app(run: Path):
    from streamlit.testing.v1 import AppTest

    os.environ["SAEURON_RUN"] = str(run)
    return AppTest.from_file(APP, default_timeout=TIMEOUT)


def _clean(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _texts(at) -> str:
    return "\n".join([m.value for m in at.markdown] + [c.value for c in at.caption] + [s.value for s in at.subheader])


def _axis_types(at, key: str) -> dict:
    """The x and y axis types of the page's plotly chart with this key."""
    for el in at.get("plotly_chart"):
        spec = json.loads(el.proto.spec)
        if el.proto.id and key in el.proto.id:
            layout = spec["layout"]
            return {a: layout.get(f"{a}axis", {}).get("type") for a in ("x", "y")}
    raise AssertionError(f"no plotly chart {key!r}")


def with_stored_settings(app_run: Path, dest: Path) -> Path:
    """A copy of the app run where the demo's evaluation stored neon's setting and tuned.json star's."""
    shutil.copytree(app_run, dest)
    (dest / "eval").mkdir()
    config = {"hookpoint": HP, "selection": "saeuron", "firing": "mean"}
    (dest / "eval" / "style-neon.json").write_text(json.dumps(
        {"targets": {"style:neon": {"UA": 90.0, "percentile": 95.5, "multiplier": -7.0, "dominance": 0.0}}, "config": config}))
    (dest / "eval" / "results.json").write_text(json.dumps(  # the demo's merge: its hookpoint is "per target"
        {"targets": {"style:neon": {"percentile": 1.0, "multiplier": -1.0}}, "config": {**config, "hookpoint": "per target", "seeds": [7]}}))
    (dest / "eval" / "other.json").write_text(json.dumps(  # another hookpoint's evaluation: not this SAE's setting
        {"targets": {"object:ring": {"percentile": 90.0, "multiplier": -3.0}}, "config": {**config, "hookpoint": "elsewhere"}}))
    (dest / "saes" / HP / "tuned.json").write_text(json.dumps(
        {"object:star": {"percentile": 96.0, "multiplier": -5.0, "dominance": 1.5, "start": 0.5, "tune_seeds": [100]}}))
    return dest


# ---------------------------------------------------------------- helpers


def test_inspect_run_finds_pieces(app_run, tmp_path):
    from saeuron.app import inspect_run

    info = inspect_run(app_run)
    assert info.missing == []
    assert info.cache == app_run / "cache.h5"
    assert info.saes == {HP: app_run / "saes" / HP}
    assert info.concepts == {HP: app_run / "saes" / HP / "concepts.h5"}

    assert "saeuron demo" in inspect_run(tmp_path / "nope").missing[0]
    empty = inspect_run(tmp_path)
    assert any("saeuron cache" in m for m in empty.missing) and any("saeuron train" in m for m in empty.missing)
    only_sae = tmp_path / "r2"
    shutil.copytree(app_run / "saes", only_sae / "saes", ignore=shutil.ignore_patterns("concepts.h5"))
    msgs = inspect_run(only_sae).missing
    assert any("saeuron score" in m for m in msgs) and any("saeuron cache" in m for m in msgs)


def test_sidebar_lists_block_saes_before_their_sub_modules():
    from saeuron.app import RunInfo, sidebar_hookpoints

    names = ["down_blocks.1.attentions.0.transformer_blocks.0.attn2", "up_blocks.1.attentions.2", "up_blocks.0.attentions.1"]
    info = RunInfo(run=Path("."), saes={hp: Path(hp) for hp in names})
    assert sidebar_hookpoints(info) == ["up_blocks.0.attentions.1", "up_blocks.1.attentions.2", names[0]]


def test_feature_stats_match_direct_encoding(app_run):
    from saeuron.app import feature_stats, feature_table, spatial_map
    from saeuron.cache import open_store, read_rows, row_provenance
    from saeuron.concepts import ConceptScores
    from saeuron.sae import load_sae

    sae = load_sae(app_run / "saes" / HP, hookpoint=HP)
    stats = feature_stats(app_run / "cache.h5", HP, sae)
    assert stats.n_rows == open_store(app_run / "cache.h5").rows[HP]
    with torch.no_grad():
        lat = sae.encode(read_rows(app_run / "cache.h5", HP)).clamp_min(0)
    np.testing.assert_allclose(stats.freq, (lat > 0).float().mean(0).numpy(), atol=1e-6)
    np.testing.assert_allclose(stats.mean_act, lat.mean(0).numpy(), rtol=1e-4, atol=1e-6)
    f = int(np.argmax(stats.freq))
    assert len(stats.values(f)) == int((lat[:, f] > 0).sum())
    top = stats.top_images(f, 3)
    assert len({(t["prompt"], t["seed"]) for t in top}) == len(top) >= 1
    heat = spatial_map(app_run / "cache.h5", HP, sae, top[0]["start"], top[0]["stop"], f)
    assert heat.shape == (16, 16)
    assert heat.max() == pytest.approx(top[0]["max_act"], rel=1e-5)
    prov = row_provenance(app_run / "cache.h5", HP, slice(top[0]["start"], top[0]["stop"]))
    assert set(prov["step"].tolist()) == {top[0]["step"]}

    scores = ConceptScores.load(app_run / "saes" / HP / "concepts.h5")
    table = feature_table(stats, scores)
    best = scores.scores.max(1)
    assert table.loc[f, "top_concept"] == scores.concepts[int(best[:, f].argmax())]
    assert table.loc[f, "top_score"] == pytest.approx(float(best[:, f].max()))


def test_bounded_sample(app_run):
    from saeuron.app import feature_stats
    from saeuron.sae import load_sae

    stats = feature_stats(app_run / "cache.h5", HP, load_sae(app_run / "saes" / HP, hookpoint=HP), max_rows=1000)
    assert 0 < stats.n_rows <= 1000 and stats.n_rows % 256 == 0  # whole image-steps only


def test_manual_plan_and_bad_ids(app_run):
    from saeuron.app import manual_plan, parse_feature_ids
    from saeuron.concepts import ConceptScores
    from saeuron.errors import UserError

    scores = ConceptScores.load(app_run / "saes" / HP / "concepts.h5")
    plan = manual_plan(scores, [3, 7], -2.0, (1, 3))
    assert sorted(plan.steps) == [1, 2] and plan.n_features() == 4
    assert parse_feature_ids("3, 7 9") == [3, 7, 9]
    with pytest.raises(UserError, match="not an integer"):
        parse_feature_ids("3, x")
    with pytest.raises(UserError, match="out of range"):
        manual_plan(scores, [999], -1.0)


def test_stored_settings(app_run, tmp_path):
    from saeuron.ablate import SETTING_DEFAULTS
    from saeuron.app import build_plan, setting_for, stored_settings
    from saeuron.ablate import plan_ablation
    from saeuron.concepts import ConceptScores

    assert stored_settings(app_run, HP, app_run / "saes" / HP) == {}
    run = with_stored_settings(app_run, tmp_path / "run")
    (run / "eval" / "object-ring.json").write_text(json.dumps(  # an unlearned folder's evaluation: sites per target
        {"targets": {"object:ring": {"percentile": 97.0, "multiplier": -4.0, "hookpoint": f"{HP},elsewhere"},
                     "object:heart": {"percentile": 91.0, "multiplier": -2.0, "hookpoint": f"elsewhere,{HP}"}},
         "config": {"method": "saeuron", "selection": "saeuron", "firing": "mean"}}))
    stored = stored_settings(run, HP, run / "saes" / HP)
    # not other.json's ring (another hookpoint), nor the heart of an unlearned folder whose first site is elsewhere
    assert set(stored) == {"style:neon", "object:star", "object:ring"}
    neon, star, ring = stored["style:neon"], stored["object:star"], stored["object:ring"]
    assert (ring["percentile"], ring["multiplier"]) == (97.0, -4.0) and "eval/object-ring.json" in ring["source"]
    assert (neon["percentile"], neon["multiplier"], neon["dominance"]) == (95.5, -7.0, 0.0)
    assert "eval/style-neon.json" in neon["source"]
    assert (star["percentile"], star["multiplier"], star["dominance"], star["start"]) == (96.0, -5.0, 1.5, 0.5) and "tuned" in star["source"]
    assert neon["start"] == 0.0  # a record without the setting: SAeUron's, every step
    default = setting_for(stored, "object:heart")
    assert {k: default[k] for k in SETTING_DEFAULTS} == SETTING_DEFAULTS and default["source"] == "default"
    # tuned.json wins over the evaluation
    (run / "saes" / HP / "tuned.json").write_text(json.dumps({"style:neon": {"percentile": 97.0, "multiplier": -2.0}}))
    assert stored_settings(run, HP, run / "saes" / HP)["style:neon"]["percentile"] == 97.0
    (run / "saes" / HP / "tuned.json").write_text("not json")  # unreadable files are skipped
    assert stored_settings(run, HP, run / "saes" / HP)["style:neon"]["percentile"] == 95.5

    scores = ConceptScores.load(app_run / "saes" / HP / "concepts.h5")
    plan = build_plan(scores, {"style:neon": neon, "object:star": star}, [3], -2.0, (0, 4))
    alone = [plan_ablation(scores, ["style:neon"], -7.0, percentile=95.5),
             plan_ablation(scores, ["object:star"], -5.0, percentile=96.0, min_dominance=1.5, start=0.5)]
    assert all(step >= 2 for step in alone[1].steps)  # the star's first half of the 4 cached steps is left alone
    for step, sa in plan.steps.items():
        expect = {3} | {f for p in alone if step in p.steps for f in p.steps[step].features.tolist()}
        assert set(sa.features.tolist()) == expect


def test_grid_helpers(app_run):
    from saeuron.app import feature_from_selection, grid_spec, grid_summary, judge_marks, labelled_grid
    from saeuron.concept_set import ConceptSet
    from saeuron.minicanvas.world import OBJECTS, STYLE_NAMES

    spec = grid_spec(ConceptSet.minicanvas())
    assert (spec.row_labels, spec.col_labels, spec.n_cols) == (list(STYLE_NAMES), list(OBJECTS), len(OBJECTS))
    assert spec.truth[len(OBJECTS) + 1] == {**spec.truth[len(OBJECTS) + 1], "style": STYLE_NAMES[1], "object": OBJECTS[1]}
    imgs = np.zeros((len(spec.prompts), 32, 32, 3), np.uint8)
    marks = [False] * len(spec.prompts)
    marks[3] = True
    grid = labelled_grid(imgs, spec, scale=2, marks=marks)
    assert grid.shape[0] > 10 * 64 and grid.shape[1] > 10 * 64 and grid.dtype == np.uint8
    assert (grid[..., 0] > 200).any()  # the red frame
    # a set that is not a full product is tiled without labels
    partial = ConceptSet.from_rows([{"prompt": "a", "style": "x", "object": "o"}, {"prompt": "b", "style": "y", "object": "p"}],
                                   "two", kinds=("style", "object"))
    assert grid_spec(partial).row_labels == [] and grid_spec(partial).prompts == ["a", "b"]

    truth = [{k: t[k] for k in ("style", "object")} for t in spec.truth]
    after = [dict(t, style="ocean") if t["style"] == "neon" else t for t in truth]  # neon erased, everything else kept
    assert sum(judge_marks(spec, after, ["style", "object"])) == len(OBJECTS)
    row = grid_summary(spec, ["style:neon"], truth, after)[0]
    n_other = len(truth) - len(OBJECTS)
    assert row["recognised as it (before → after)"] == f"{len(OBJECTS)}/{len(OBJECTS)} → 0/{len(OBJECTS)}"
    assert row["other styles kept"] == f"{n_other}/{n_other} → {n_other}/{n_other}"
    assert row["object kept"] == f"{n_other}/{n_other} → {n_other}/{n_other}"

    assert feature_from_selection({"selection": {"rows": [2], "columns": []}}, [9, 8, 7]) == 7
    assert feature_from_selection({"selection": {"rows": []}}, [9, 8, 7]) is None
    assert feature_from_selection(None, [1]) is None and feature_from_selection({"selection": {"rows": [5]}}, [1]) is None


def test_unlearned_folders(app_run, tmp_path):
    from saeuron.app import unlearned_folders

    assert unlearned_folders(app_run) == []  # none written (or saeuron.unlearn not there yet): the page shows nothing


def test_ablate_page_unlearned_models(app_run, tmp_path, monkeypatch):
    """Any unlearned-model folder of the run can be chosen; its images stand beside the base model's."""
    unlearn = pytest.importorskip("saeuron.unlearn")
    from saeuron.app import unlearned_folders

    run = tmp_path / "run"
    shutil.copytree(app_run, run)
    for name in ("esd-star", "uce-neon"):
        (run / "unlearned" / name).mkdir(parents=True)
        (run / "unlearned" / name / "unlearn.json").write_text(json.dumps({"method": name[:3], "targets": ["object:star"]}))
    assert [f.name for f in unlearned_folders(run)] == ["esd-star", "uce-neon"]

    class Fake:  # the interface the page codes against: .summary and .generate(pipe, prompts, seeds, config)
        def __init__(self, folder):
            self.folder = folder
            self.summary = f"fake method: object:star ({folder.name})"

        def generate(self, pipe, prompts, seeds, config):
            return torch.zeros(len(prompts), 3, 32, 32)  # black images

    monkeypatch.setattr(unlearn, "load_unlearned", lambda folder, pipe=None: Fake(Path(folder)))
    at = _app(run)
    at.session_state["page"] = "Ablate"
    at.run()
    _clean(at)
    assert [Path(o).name for o in at.selectbox(key="ul_folder").options] == ["esd-star", "uce-neon"]
    at.selectbox(key="ul_folder").set_value(str(run / "unlearned" / "uce-neon"))
    at.number_input(key="ab_steps").set_value(2)
    at.button(key="ul_run").click().run()
    _clean(at)
    text = _texts(at)
    assert "fake method: object:star (uce-neon)" in text
    assert "Unlearned: a circle in sunset style · seed 0" in text and "Original: a circle in sunset style · seed 0" in text
    at.number_input(key="ab_steps").set_value(1)
    at.button(key="ul_grid_button").click().run()  # the world's whole grid with the unlearned model
    _clean(at)
    assert "**Everywhere** ·" in _texts(at) and "unlearned model uce-neon" in _texts(at)


def test_cli_parser():
    from saeuron.app import _cmd_app, register_cli, run_dir_from_argv

    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["app", "some/run", "--port", "9999"])
    assert args.func is _cmd_app and args.run_dir == "some/run" and args.port == 9999
    assert run_dir_from_argv(["my/run"]) == "my/run"


# ---------------------------------------------------------------- pages


def test_features_page(app_run):
    from saeuron.app import feature_stats
    from saeuron.cache import open_store
    from saeuron.concepts import ConceptScores
    from saeuron.sae import load_sae

    at = _app(app_run).run()
    _clean(at)
    rows = open_store(app_run / "cache.h5").rows[HP]
    text = _texts(at)
    assert f"Statistics over {rows:,} sampled token rows" in text
    assert "SAE with 256 features" in text
    stats = feature_stats(app_run / "cache.h5", HP, load_sae(app_run / "saes" / HP, hookpoint=HP))
    # default sort is by frequency: the first feature shown is the most frequent one
    f = int(at.number_input(key="feature").value)
    assert stats.freq[f] == pytest.approx(stats.freq.max())
    assert f"frequency **{stats.freq[f]:.4f}**" in text
    top = stats.top_images(f, 6)
    assert any(f"at step {top[0]['step']}" in c.value for c in at.caption)
    df = at.dataframe[0].value
    assert len(df) == 50 and list(df["frequency"]) == sorted(df["frequency"], reverse=True)

    at.number_input(key="feature").set_value(5).run()
    _clean(at)
    assert any(s.value == "Feature 5" for s in at.subheader)
    assert f"frequency **{stats.freq[5]:.4f}**" in _texts(at)
    scores = ConceptScores.load(app_run / "saes" / HP / "concepts.h5")
    top_c = scores.concepts[int(np.argmax(scores.scores[:, :, 5].max(1)))]
    assert f"top concept of feature 5: {top_c} " in _texts(at)
    assert _axis_types(at, "per_concept_t") == {"x": "category", "y": "category"}  # timesteps are names, not a scale
    at.text_input(key="concept_filter").set_value("style:").run()
    _clean(at)
    assert all(c.startswith("style:") for c in at.dataframe[0].value["top_concept"])


def test_concepts_page(app_run):
    from saeuron.concepts import ConceptScores

    scores = ConceptScores.load(app_run / "saes" / HP / "concepts.h5")
    at = _app(app_run)
    at.session_state["page"] = "Concepts"
    at.run()
    _clean(at)
    at.selectbox(key="concept").set_value("object:ring").run()
    _clean(at)
    c = scores.index("object:ring")
    best = int(np.argmax(scores.scores[c].max(0)))
    assert f"best feature overall: {best} " in _texts(at)
    sel = at.dataframe[0].value
    assert list(sel["timestep"]) == scores.timesteps.tolist()
    # feature ids on a category axis: 30 columns, not bands over a numeric range
    assert _axis_types(at, "concept_heat")["x"] == "category"
    top = at.dataframe[1].value
    assert len(top) == 30 and top["feature"].iloc[0] == best
    assert list(top["best score"]) == sorted(top["best score"], reverse=True)


def test_concepts_page_starts_from_stored_setting(app_run, tmp_path):
    run = with_stored_settings(app_run, tmp_path / "run")
    at = _app(run)
    at.session_state["page"] = "Concepts"
    at.run()
    at.selectbox(key="concept").set_value("style:neon").run()
    _clean(at)
    assert at.number_input(key="concept_percentile:style:neon").value == 95.5
    at.selectbox(key="concept").set_value("object:ring").run()
    assert at.number_input(key="concept_percentile:object:ring").value == 99.7  # nothing stored: the default


def test_ablate_page(app_run):
    from saeuron.ablate import plan_ablation
    from saeuron.concepts import ConceptScores

    scores = ConceptScores.load(app_run / "saes" / HP / "concepts.h5")
    at = _app(app_run)
    at.session_state["page"] = "Ablate"
    at.run()
    _clean(at)
    assert at.multiselect(key=f"ab_concepts:{HP}").value == []  # nothing stored: no target chosen
    at.selectbox(key="ab_style").set_value("neon")
    at.selectbox(key="ab_object").set_value("star")
    at.number_input(key="ab_steps").set_value(6)
    at.multiselect(key=f"ab_concepts:{HP}").set_value(["style:neon"]).run()
    assert at.number_input(key=f"ab_pct:{HP}:style:neon").value == 99.7  # the default setting
    assert at.number_input(key=f"ab_mult:{HP}:style:neon").value == -1.0
    at.number_input(key=f"ab_pct:{HP}:style:neon").set_value(95.0)
    at.button(key="ab_run").click().run()
    _clean(at)
    n = plan_ablation(scores, ["style:neon"], -1.0, percentile=95.0, step_window=(0, 4)).n_features()
    text = _texts(at)
    assert f"ablated style:neon (95 / -1) · {n} (step, feature) pairs" in text
    assert "Original: a star in neon style · seed 0 → classifier:" in text
    assert "Ablated: a star in neon style · seed 0 → classifier:" in text

    at.number_input(key="st_feature").set_value(7)
    at.button(key="st_run").click().run()
    _clean(at)
    assert "steered feature 7 · add 10.0" in _texts(at)

    # bad values: one clear error each, no traceback
    at.multiselect(key=f"ab_concepts:{HP}").set_value([])
    at.text_input(key="ab_features").set_value("4, oops")
    at.button(key="ab_run").click().run()
    assert not at.exception and "'oops' is not an integer" in at.error[0].value
    at.text_input(key="ab_features").set_value("")
    at.button(key="ab_run").click().run()
    assert not at.exception and "pick at least one concept" in at.error[0].value
    at.text_input(key="ab_features").set_value("4")
    at.number_input(key="ab_mult").set_value(2.0)
    at.button(key="ab_run").click().run()
    assert not at.exception and "must be negative" in at.error[0].value


def test_ablate_page_everywhere_from_stored_setting(app_run, tmp_path):
    """The run's targets and their stored settings are where the page starts; the whole grid renders before/after."""
    from saeuron.minicanvas.world import OBJECTS, STYLE_NAMES

    run = with_stored_settings(app_run, tmp_path / "run")
    at = _app(run)
    at.session_state["page"] = "Ablate"
    at.run()
    _clean(at)
    assert at.multiselect(key=f"ab_concepts:{HP}").value == ["style:neon", "object:star"]
    assert at.number_input(key=f"ab_pct:{HP}:style:neon").value == 95.5
    assert at.number_input(key=f"ab_mult:{HP}:style:neon").value == -7.0
    assert at.number_input(key=f"ab_dom:{HP}:object:star").value == 1.5
    assert at.number_input(key=f"ab_start:{HP}:object:star").value == 0.5
    assert any("tuned (tuned.json, seeds [100])" in c.value for c in at.caption)
    assert at.number_input(key="ab_seed").value == 7  # the run's evaluation seed
    at.multiselect(key=f"ab_concepts:{HP}").set_value(["style:neon"])
    at.number_input(key="ab_steps").set_value(1)
    at.button(key="ab_grid").click().run()
    _clean(at)
    n = len(STYLE_NAMES) * len(OBJECTS)
    assert f"**Everywhere** · {n} prompts · seed 7 · ablated style:neon (95.5 / -7)" in _texts(at)
    summary = at.dataframe[-1].value
    assert summary["target"].tolist() == ["style:neon"]
    assert summary["recognised as it (before → after)"].iloc[0].endswith(f"/{len(OBJECTS)}")
    assert len(at.get("image")) >= 2  # before and after


def test_run_page(app_run):
    at = _app(app_run)
    at.session_state["page"] = "Run"
    at.run()
    _clean(at)
    text = _texts(at)
    assert "6 prompts" in text and "4 steps" in text and "concept scores: yes" in text


def test_missing_pieces(app_run, tmp_path):
    run = tmp_path / "partial"
    run.mkdir()
    shutil.copy(app_run / "cache.h5", run / "cache.h5")
    at = _app(run).run()
    assert not at.exception
    assert "saeuron train --cache" in at.warning[0].value
    assert any("Missing:" in e.value and "saeuron train" in e.value for e in at.error)

    empty = tmp_path / "empty"
    empty.mkdir()
    for page in ("Features", "Concepts", "Ablate", "Run"):
        at = _app(empty)
        at.session_state["page"] = page
        at.run()
        assert not at.exception
        assert "saeuron cache" in at.warning[0].value and "saeuron train" in at.warning[0].value

    at.text_input(key="run_dir").set_value(str(tmp_path / "does-not-exist")).run()
    assert not at.exception
    assert "saeuron demo --out" in at.warning[0].value

    no_scores = tmp_path / "noscores"
    shutil.copytree(app_run, no_scores, ignore=shutil.ignore_patterns("concepts.h5"))
    at = _app(no_scores)
    at.session_state["page"] = "Concepts"
    at.run()
    assert not at.exception
    assert any("saeuron score" in e.value for e in at.error)


def test_cmd_app_runs_streamlit(monkeypatch, tmp_path):
    import saeuron.app as app

    calls = []
    monkeypatch.setattr(app.subprocess, "call", lambda cmd, env: calls.append((cmd, env)) or 0)
    args = dict(run_dir=str(tmp_path), port=8765, headless=True, address="127.0.0.1", usage_stats=False, device="cpu", dtype="bfloat16")
    assert app._cmd_app(argparse.Namespace(**args)) == 0
    cmd, env = calls[0]
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4] == APP
    assert cmd[-2:] == ["--", str(tmp_path.resolve())] and "8765" in cmd and "--server.headless" in cmd
    # local by default, no usage statistics; the device and precision reach the app through its environment
    flags = dict(zip(cmd[5:-2:2], cmd[6:-2:2]))
    assert flags["--server.address"] == "127.0.0.1" and flags["--browser.gatherUsageStats"] == "false"
    assert env["SAEURON_DEVICE"] == "cpu" and env["SAEURON_DTYPE"] == "bfloat16"
    from saeuron.errors import UserError

    with pytest.raises(UserError, match="not a TCP port"):
        app._cmd_app(argparse.Namespace(**{**args, "port": 0}))
