"""cache -> train -> score -> ablate -> evaluate on the tiny run of conftest."""

import json

import numpy as np
import torch

from conftest import TINY_HOOKPOINT
from saeuron.ablate import AblationPlan, plan_ablation, sample_with_ablation
from saeuron.concepts import ConceptScores
from saeuron.pipelines import SamplerConfig, sample
from saeuron.sae import load_sae

FAST = SamplerConfig(steps=4)


def _sae(run):
    return load_sae(run / "saes" / TINY_HOOKPOINT, hookpoint=TINY_HOOKPOINT).eval()


def test_scores_cover_every_concept_and_step(tiny_run):
    scores = ConceptScores.load(tiny_run / "saes" / TINY_HOOKPOINT / "concepts.h5")
    assert scores.concepts == ["style:lava", "style:neon", "style:ocean", "object:ring", "object:star"]
    assert scores.scores.shape[:2] == (5, 4) and list(scores.steps) == [0, 1, 2, 3]
    assert (scores.n_images == np.array([4, 4, 4, 6, 6])).all()
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
                 "--out", str(out)]) == 0
    assert json.loads((out / "index.json").read_text())[0]["prompt"] == "a star in neon style"


def test_evaluate_writes_unlearncanvas_schema_and_report(tiny_run, minicanvas_pipe, tmp_path):
    from saeuron.evaluate import run_evaluation

    sae_dir = tiny_run / "saes" / TINY_HOOKPOINT
    out = tmp_path / "results.json"
    res = run_evaluation(sae_dir, ["style:neon"], [0], None, SamplerConfig(steps=2), False, out, tmp_path / "report",
                         pipe=minicanvas_pipe)
    saved = json.loads(out.read_text())
    assert set(saved) == {"targets", "mean", "base", "config"}
    m = saved["targets"]["style:neon"]
    assert all(0 <= m[k] <= 100 for k in ("UA", "IRA", "CRA"))
    assert set(saved["mean"]) == {"style"} and saved["mean"]["style"]["UA"] == m["UA"]
    assert "changed_label_share" in m["fidelity"]
    assert (tmp_path / "report" / "report.md").read_text().startswith("| target |")
    assert (tmp_path / "report" / "base.png").exists()
    assert res["targets"] == saved["targets"]
