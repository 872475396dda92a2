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


def test_ablate_page(app_run):
    from saeuron.ablate import plan_ablation
    from saeuron.concepts import ConceptScores

    scores = ConceptScores.load(app_run / "saes" / HP / "concepts.h5")
    at = _app(app_run)
    at.session_state["page"] = "Ablate"
    at.run()
    _clean(at)
    at.selectbox(key="ab_style").set_value("neon")
    at.selectbox(key="ab_object").set_value("star")
    at.number_input(key="ab_steps").set_value(6)
    at.multiselect(key="ab_concepts").set_value(["style:neon"])
    at.number_input(key="ab_pct").set_value(95.0)
    at.button(key="ab_run").click().run()
    _clean(at)
    n = plan_ablation(scores, ["style:neon"], -1.0, percentile=95.0, step_window=(0, 4)).n_features()
    text = _texts(at)
    assert f"ablated style:neon · {n} (step, feature) pairs" in text
    assert "Original: a star in neon style · seed 0 → classifier:" in text
    assert "Ablated: a star in neon style · seed 0 → classifier:" in text

    at.number_input(key="st_feature").set_value(7)
    at.button(key="st_run").click().run()
    _clean(at)
    assert "steered feature 7 · add 10.0" in _texts(at)

    # bad values: one clear error each, no traceback
    at.multiselect(key="ab_concepts").set_value([])
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
