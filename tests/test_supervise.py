"""Concept-supervised fine-tuning (SAEmnesia): each concept gets one latent that then carries it; resumable; the
`assigned` selection ablates that latent."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import TINY_HOOKPOINT
from saeuron import supervise as sup
from saeuron.ablate import load_ablation_site, plan_ablation
from saeuron.cli import main
from saeuron.concepts import ConceptScores
from saeuron.errors import UserError
from saeuron.sae import load_sae


def _config(tiny_run, out, **kw):
    return sup.SuperviseConfig(sae=str(tiny_run / "saes" / TINY_HOOKPOINT), cache=str(tiny_run / "cache.h5"), out=str(out),
                               **{"epochs": 8, "lr": 3e-3, "val_fraction": 0.0, "batch_size": 256, "block_rows": 2048, "device": "cpu", **kw})


@pytest.fixture(scope="module")
def supervised(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("supervised") / "sae"
    return out, sup.supervise(_config(tiny_run, out), progress=False)


def test_each_concept_gets_its_own_latent_which_then_tells_the_concepts_apart(supervised, tiny_run):
    out, record = supervised
    bound = sup.read_concept_latents(out)
    scores = ConceptScores.load(out / "concepts.h5")
    assert set(bound) == set(scores.concepts) and len(set(bound.values())) == len(bound)
    assert [int(v) for v in scores.latents] == [bound[c] for c in scores.concepts]
    for kind in ("style", "object"):
        assert record["after"][f"{kind}_accuracy"] > record["before"][f"{kind}_accuracy"]
    assert record["after"]["style_accuracy"] >= 0.9  # at this 16x16 block styles fill the image, objects a few tokens
    assert record["after"]["fvu"] < 0.5  # still an autoencoder
    assert len(record["history"]) == 8 and not (out / sup.CHECKPOINT_FILE).exists()
    # a sae-lens folder the rest of the pipeline opens as any SAE folder
    sae = load_sae(out, hookpoint=TINY_HOOKPOINT)
    assert sae.cfg.d_sae == load_sae(tiny_run / "saes" / TINY_HOOKPOINT, hookpoint=TINY_HOOKPOINT).cfg.d_sae


def test_assigned_selection_ablates_the_bound_latent_alone(supervised):
    out, _ = supervised
    site = load_ablation_site(out, selection="assigned")
    latent = sup.read_concept_latents(out)["object:star"]
    plan = plan_ablation(site.scores, ["object:star"], -5.0, percentile=90.0, selection="assigned")
    assert plan.steps and all(s.features.tolist() == [latent] for s in plan.steps.values())
    both = plan_ablation(site.scores, ["object:star", "style:neon"], -5.0, percentile=90.0, selection="assigned")
    assert {f for s in both.steps.values() for f in s.features.tolist()} <= {latent, sup.read_concept_latents(out)["style:neon"]}


def test_assigned_selection_needs_a_supervised_sae(tiny_run):
    scores = ConceptScores.load(tiny_run / "saes" / TINY_HOOKPOINT / "concepts.h5")
    with pytest.raises(UserError, match="saeuron supervise"):
        plan_ablation(scores, ["object:star"], -5.0, percentile=90.0, selection="assigned")


def test_rescoring_a_supervised_folder_keeps_its_binding(supervised, tmp_path):
    out, _ = supervised
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    cache = json.loads((copy / "supervise.json").read_text())["config"]["cache"]
    assert main(["score", "--cache", cache, "--sae", str(copy)]) == 0
    assert ConceptScores.load(copy / "concepts.h5").latents.tolist() == ConceptScores.load(out / "concepts.h5").latents.tolist()


def test_interrupted_run_resumes_to_the_same_weights(supervised, tiny_run, tmp_path, monkeypatch):
    out, record = supervised
    calls = {"n": 0}
    real = sup._labelled_batches

    def dies_in_third_epoch(cfg, hookpoint, use, labels, epoch, device):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(cfg, hookpoint, use, labels, epoch, device)

    monkeypatch.setattr(sup, "_labelled_batches", dies_in_third_epoch)
    again = tmp_path / "again"
    with pytest.raises(KeyboardInterrupt):
        sup.supervise(_config(tiny_run, again), progress=False)
    assert (again / sup.CHECKPOINT_FILE).exists() and not (again / sup.RECORD_FILE).exists()
    monkeypatch.setattr(sup, "_labelled_batches", real)
    resumed = sup.supervise(_config(tiny_run, again), progress=False)
    assert resumed["history"] == record["history"]
    a, b = load_sae(out, hookpoint=TINY_HOOKPOINT), load_sae(again, hookpoint=TINY_HOOKPOINT)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    with pytest.raises(UserError, match="another config"):  # a checkpoint of another run is never mixed in
        torch.save({"config": {"epochs": 99}}, again / sup.CHECKPOINT_FILE)
        sup.supervise(_config(tiny_run, again), progress=False)


def test_cli_refuses_bad_input(tiny_run, tmp_path, capsys):
    sae = str(tiny_run / "saes" / TINY_HOOKPOINT)
    cache = str(tiny_run / "cache.h5")
    assert main(["supervise", "--sae", sae, "--cache", cache, "--out", sae]) == 2
    assert "the SAE folder itself" in capsys.readouterr().err
    assert main(["supervise", "--sae", str(tmp_path / "nope"), "--cache", cache, "--out", str(tmp_path / "o")]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["supervise", "--sae", sae, "--cache", cache, "--out", str(tmp_path / "o"), "--epochs", "0"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["supervise", "--sae", sae, "--cache", cache, "--out", str(tmp_path / "o"), "--dtype", "bfloat16"]) == 2
    assert "float32" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_tuning_an_assigned_selection_searches_the_multiplier_alone(supervised, monkeypatch):
    from saeuron import evaluate as ev

    out, _ = supervised
    site = load_ablation_site(out, selection="assigned")
    seen = []
    monkeypatch.setattr(ev, "ablated_answer_set", lambda pipe, site, targets, answers, config, settings: seen.append(settings[targets[0]]))
    monkeypatch.setattr(ev, "_labels_of", lambda images, judge: None)
    monkeypatch.setattr(ev, "unlearning_metrics", lambda target, answers, labels: {"UA": 0.0, "IRA": 0.0, "CRA": 0.0})
    grid = {"percentile": (99.0, 99.5), "multiplier": (-1.0, -5.0), "dominance": (0.0,), "start": (0.0,)}
    ev.tune_target(None, site, "object:star", [100], None, grid)
    assert [s["multiplier"] for s in seen] == [-1.0, -5.0] and {s["percentile"] for s in seen} == {99.0}
