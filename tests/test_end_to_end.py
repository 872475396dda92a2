"""cache -> train -> score -> ablate -> evaluate on the tiny run of conftest."""

import json

import numpy as np
import pytest
import torch

from conftest import TINY_HOOKPOINT
from saeuron.ablate import AblationPlan, plan_ablation, sample_with_ablation
from saeuron.concepts import ConceptScores
from saeuron.pipelines import SamplerConfig, sample
from saeuron.sae import load_sae

FAST = SamplerConfig(steps=4)


def _sae(run):
    return load_sae(run / "saes" / TINY_HOOKPOINT, hookpoint=TINY_HOOKPOINT).eval()


def test_the_cache_records_the_cfg_scale_it_used(tiny_run, minicanvas_pipe):
    from saeuron.cache import open_store
    from saeuron.pipelines import default_guidance

    assert open_store(tiny_run / "cache.h5").config["cfg"] == default_guidance(minicanvas_pipe)


def test_scores_cover_every_concept_and_step(tiny_run):
    scores = ConceptScores.load(tiny_run / "saes" / TINY_HOOKPOINT / "concepts.h5")
    assert scores.concepts == ["style:lava", "style:neon", "style:ocean", "object:ring", "object:star"]
    assert scores.scores.shape[:2] == (5, 4) and list(scores.steps) == [0, 1, 2, 3]
    assert (scores.n_images == np.array([4, 4, 4, 6, 6])).all()
    assert scores.seeds.tolist() == [0, 1]
    assert np.isfinite(scores.scores).all()


def test_empty_ablation_gives_the_plain_images_exactly(tiny_run, minicanvas_pipe):
    prompts, seeds = ["a star in neon style", "a ring in lava style"], [3, 4]
    plain = sample(minicanvas_pipe, prompts, seeds, FAST)
    same = sample_with_ablation(minicanvas_pipe, _sae(tiny_run), TINY_HOOKPOINT, AblationPlan({}), prompts, seeds, FAST)
    assert torch.equal(plain, same)


def test_ablating_a_style_changes_its_images(tiny_run, minicanvas_pipe):
    scores = ConceptScores.load(tiny_run / "saes" / TINY_HOOKPOINT / "concepts.h5")
    plan = plan_ablation(scores, ["style:neon"], multiplier=-10.0, top_n=3)
    assert plan.n_features() > 0
    prompts, seeds = ["a star in neon style"] * 2, [3, 4]
    plain = sample(minicanvas_pipe, prompts, seeds, FAST)
    ablated = sample_with_ablation(minicanvas_pipe, _sae(tiny_run), TINY_HOOKPOINT, plan, prompts, seeds, FAST)
    assert (plain - ablated).abs().mean() > 1e-3


def test_generate_cli_with_ablation(tiny_run, tmp_path):
    from saeuron.cli import main

    out = tmp_path / "abl"
    assert main(["generate", "--prompt", "a star in neon style", "--seeds", "0", "--steps", "4", "--sae",
                 str(tiny_run / "saes" / TINY_HOOKPOINT), "--ablate", "style:neon", "--multiplier", "-5", "--percentile", "99",
                 "--dominance", "2", "--out", str(out)]) == 0
    assert json.loads((out / "index.json").read_text())[0]["prompt"] == "a star in neon style"


def test_evaluate_writes_unlearncanvas_schema_and_report(tiny_run, minicanvas_pipe, tmp_path):
    from saeuron.errors import UserError
    from saeuron.evaluate import run_evaluation

    sae_dir = tiny_run / "saes" / TINY_HOOKPOINT
    out = tmp_path / "results.json"
    with pytest.raises(UserError, match=r"evaluation seeds \[0\] were also used to compute the concept scores"):
        run_evaluation(sae_dir, ["style:neon"], [0, 2], None, SamplerConfig(steps=2), False, out, tmp_path / "report", pipe=minicanvas_pipe)
    assert not out.exists()
    res = run_evaluation(sae_dir, ["style:neon"], [2], None, SamplerConfig(steps=2), False, out, tmp_path / "report",
                         pipe=minicanvas_pipe)  # seeds disjoint from the scores' cache seeds (0, 1)
    saved = json.loads(out.read_text())
    assert set(saved) == {"targets", "mean", "base", "config"}
    m = saved["targets"]["style:neon"]
    assert all(0 <= m[k] <= 100 for k in ("UA", "IRA", "CRA"))
    assert set(saved["mean"]) == {"style"} and saved["mean"]["style"]["UA"] == m["UA"]
    assert "changed_label_share" in m["fidelity"]
    assert (tmp_path / "report" / "report.md").read_text().startswith("| target |")
    assert (tmp_path / "report" / "base.png").exists()
    assert res["targets"] == saved["targets"]


def test_stored_tuned_values_are_used_only_when_still_valid(tiny_run, minicanvas_pipe, tmp_path):
    import shutil

    from saeuron.ablate import SETTING_DEFAULTS, load_ablation_site
    from saeuron.errors import UserError
    from saeuron.evaluate import run_evaluation

    sae_dir = tmp_path / "sae"
    shutil.copytree(tiny_run / "saes" / TINY_HOOKPOINT, sae_dir)
    fast = SamplerConfig(steps=2)
    tuned = {"style:neon": {"percentile": 99.0, "multiplier": -5.0, "tune_seeds": [5]}}
    (sae_dir / "tuned.json").write_text(json.dumps(tuned))
    site = load_ablation_site(sae_dir)
    assert site.capture == "output" and site.hookpoint == TINY_HOOKPOINT
    # `generate --ablate` uses these; a record tuned before a setting existed (here "start") has its default
    assert site.params("style:neon") == {"percentile": 99.0, "multiplier": -5.0, "dominance": 0.0, "start": 0.0}
    assert site.params("style:neon", multiplier=-2.0, start=0.2) == {"percentile": 99.0, "multiplier": -2.0, "dominance": 0.0, "start": 0.2}
    assert site.params("style:lava") == SETTING_DEFAULTS

    def evaluate():
        return run_evaluation(sae_dir, ["style:neon"], [5], None, fast, False, tmp_path / "r.json", None, pipe=minicanvas_pipe)

    with pytest.raises(UserError, match="overlap the evaluation seeds"):
        evaluate()
    tuned["style:neon"].update(tune_seeds=[7], sampler=vars(SamplerConfig(steps=9)))
    (sae_dir / "tuned.json").write_text(json.dumps(tuned))
    with pytest.raises(UserError, match="other sampler settings"):
        evaluate()
    # values tuned under another feature selection do not carry over
    del tuned["style:neon"]["sampler"]
    tuned["style:neon"]["selection"] = "exclusive"
    (sae_dir / "tuned.json").write_text(json.dumps(tuned))
    with pytest.raises(UserError, match="feature selection"):
        evaluate()
    with pytest.raises(UserError, match="unknown feature selection 'best'"):
        load_ablation_site(sae_dir, selection="best")


def test_a_multi_target_plan_gives_each_target_its_own_values(tiny_run):
    from saeuron.ablate import load_ablation_site

    site = load_ablation_site(tiny_run / "saes" / TINY_HOOKPOINT)
    params = {"style:neon": {"percentile": 99.0, "multiplier": -5.0}, "object:star": {"percentile": 98.0, "multiplier": -2.0}}
    plan = site.plan(list(params), params=params)
    star_row, checked = site.scores.index("object:star"), 0
    for t, step in enumerate(site.scores.steps.tolist()):
        neon = plan_ablation(site.scores, ["style:neon"], -5.0, percentile=99.0).steps.get(step)
        star = plan_ablation(site.scores, ["object:star"], -2.0, percentile=98.0).steps.get(step)
        neon_ids = set(neon.features.tolist()) if neon else set()
        got = dict(zip(plan.steps[step].features.tolist(), plan.steps[step].scale.tolist()))
        assert neon_ids | set(star.features.tolist()) == set(got)
        for f in set(star.features.tolist()) - neon_ids:  # star's own features carry star's multiplier
            assert got[f] == pytest.approx(-2.0 * float(site.scores.mean_acts[star_row, t, f]), rel=1e-5)
            checked += 1
    assert checked > 0


def test_an_interrupted_evaluation_resumes_without_redoing_finished_targets(tiny_run, minicanvas_pipe, tmp_path, monkeypatch):
    import saeuron.evaluate as ev

    sae_dir = tiny_run / "saes" / TINY_HOOKPOINT
    real, generated = ev.ablated_answer_set, []

    def counting(pipe, site, targets, *args, **kwargs):
        generated.append(tuple(targets))
        if targets == ["style:ocean"] and len(generated) == 2:
            raise KeyboardInterrupt  # the first run dies on its second target
        return real(pipe, site, targets, *args, **kwargs)

    monkeypatch.setattr(ev, "ablated_answer_set", counting)
    out, targets, fast = tmp_path / "results.json", ["style:neon", "style:ocean"], SamplerConfig(steps=2)
    with pytest.raises(KeyboardInterrupt):
        ev.run_evaluation(sae_dir, targets, [7], None, fast, False, out, None, pipe=minicanvas_pipe)
    partial = json.loads((tmp_path / "results.json.partial").read_text())
    assert not out.exists() and list(partial["targets"]) == ["style:neon"]
    res = ev.run_evaluation(sae_dir, targets, [7], None, fast, False, out, None, pipe=minicanvas_pipe)
    assert generated == [("style:neon",), ("style:ocean",), ("style:ocean",)]  # neon was not generated again
    assert set(res["targets"]) == set(targets) and not (tmp_path / "results.json.partial").exists()
    # results saved under other settings are not reused
    partial["key"]["sampler"]["cfg"] = 9.0
    (tmp_path / "results.json.partial").write_text(json.dumps(partial))
    ev.run_evaluation(sae_dir, targets, [7], None, fast, False, out, None, pipe=minicanvas_pipe)
    assert generated[-2:] == [("style:neon",), ("style:ocean",)]


def test_evaluate_with_a_fixed_setting_or_a_given_tuning_grid(tiny_run, minicanvas_pipe, tmp_path):
    import shutil

    from saeuron.errors import UserError
    from saeuron.evaluate import parse_grid, run_evaluation

    sae_dir = tmp_path / "sae"
    shutil.copytree(tiny_run / "saes" / TINY_HOOKPOINT, sae_dir)

    def evaluate(tune=None, **kwargs):
        res = run_evaluation(sae_dir, ["style:neon"], [7], tune, SamplerConfig(steps=2), False, tmp_path / "r.json", None,
                             pipe=minicanvas_pipe, **kwargs)
        return tuple(res["targets"]["style:neon"][k] for k in ("percentile", "multiplier", "dominance"))

    assert evaluate(fixed={"percentile": 99.0, "multiplier": -3.0, "dominance": 1.5}) == (99.0, -3.0, 1.5)
    with pytest.raises(UserError, match="tune or fix"):
        evaluate(tune=[5], fixed={"multiplier": -3.0})
    # tuning searches the given grid and records it; fixed values still override the tuned ones
    percentile, multiplier, dominance = evaluate(tune=[5], grid=parse_grid("99", "-2,-4", "0,2"))
    assert percentile == 99.0 and multiplier in (-2.0, -4.0) and dominance in (0.0, 2.0)
    tuned_path = sae_dir / "tuned.json"
    stored = json.loads(tuned_path.read_text())["style:neon"]
    assert stored["grid"] == {"percentile": [99.0], "multiplier": [-2.0, -4.0], "dominance": [0.0, 2.0], "start": [0.0]}
    assert [(p["percentile"], p["multiplier"], p["dominance"]) for p in stored["tried"]] == [
        (99.0, -2.0, 0.0), (99.0, -2.0, 2.0), (99.0, -4.0, 0.0), (99.0, -4.0, 2.0)]
    assert evaluate(fixed={"multiplier": -7.0}) == (99.0, -7.0, dominance)
    # a record written before the dominance and start axes existed counts as searched at 0 alone: not re-tuned
    old = {**stored, "grid": {"percentile": [99.0], "multiplier": [-2.0, -4.0]}, "dominance": None, "tried": []}
    del old["dominance"]
    tuned_path.write_text(json.dumps({"style:neon": old}))
    assert evaluate(tune=[5], grid=parse_grid("99", "-2,-4")) == (99.0, multiplier, 0.0)
    assert json.loads(tuned_path.read_text())["style:neon"]["tried"] == []
    with pytest.raises(UserError, match="multipliers must be negative"):
        parse_grid(None, "-1,2")
    with pytest.raises(UserError, match="dominances must be >= 0"):
        parse_grid(None, None, "2,-1")
    with pytest.raises(UserError, match="'99,x'"):
        parse_grid("99,x", None)
    assert parse_grid(None, None, starts="0,0.2")["start"] == (0.0, 0.2)
    with pytest.raises(UserError, match=r"starts must be fractions .* \[0, 1\)"):
        parse_grid(None, None, starts="0,1")


@pytest.mark.slow  # about 80 s: three evaluations of 100 images
def test_evaluate_killed_after_a_target_resumes_to_the_uninterrupted_results(tiny_run, tmp_path):
    """`saeuron evaluate` killed with SIGKILL once a target is done, then run again: the same results.json as one run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    sae = tiny_run / "saes" / TINY_HOOKPOINT
    command = [sys.executable, "-m", "saeuron.cli", "evaluate", "--sae", str(sae), "--targets", "style:neon,style:ocean,style:lava",
               "--seeds", "7", "--steps", "2", "--percentile", "99", "--multiplier", "-5", "--dominance", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed.json"
    partial = tmp_path / "killed.json.partial"
    proc = subprocess.Popen([*command, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while proc.poll() is None and time.time() < deadline and not partial.exists():
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, "the evaluation ended before it could be killed"
    finally:
        proc.kill()
    done_before = list(json.loads(partial.read_text())["targets"])
    assert 1 <= len(done_before) < 3 and not killed.exists()
    for out in (killed, tmp_path / "whole.json"):
        run = subprocess.run([*command, "--out", str(out)], env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(killed.read_text()) == json.loads((tmp_path / "whole.json").read_text())
    assert not partial.exists()
