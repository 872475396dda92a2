"""A researcher's own model and concepts, end to end through the CLI: a tiny random SD pipeline, a labelled CSV,
and a tiny random CLIP as the judge (plumbing: the numbers mean nothing, every stage must run and record)."""

import json

import pytest

from saeuron.cli import main

HOOK = "up_blocks.2.attentions.1"
CSV = """prompt,artist,nudity
a dog by monet,monet,
a cat by monet,monet,
a dog by klimt,klimt,
a cat by klimt,klimt,
a nude by klimt,klimt,yes
a nude,,yes
a dog,,
"""


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, tiny_sd_dir):
    from test_judges import tiny_clip

    run = tmp_path_factory.mktemp("real")
    (run / "prompts.csv").write_text(CSV)
    sae = run / "saes" / HOOK
    assert main(["cache", "--model", str(tiny_sd_dir), "--prompts", str(run / "prompts.csv"), "--hookpoints", HOOK, "--seeds", "0-1",
                 "--steps", "3", "--device", "cpu", "--out", str(run / "cache.h5"), "--quiet"]) == 0
    assert main(["train", "--cache", str(run / "cache.h5"), "--hookpoint", HOOK, "--out", str(sae), "--expansion", "4", "--k", "4",
                 "--batch-size", "256", "--tokens", str(256 * 20), "--lr", "4e-3", "--checkpoints", "0", "--device", "auto"]) == 0
    assert main(["score", "--cache", str(run / "cache.h5"), "--sae", str(sae), "--device", "cpu"]) == 0
    return run, sae, tiny_clip(run / "clip")


def test_labels_travel_from_the_prompt_file_to_the_scores(real_run, capsys):
    from saeuron.concepts import ConceptScores

    run, sae, _ = real_run
    capsys.readouterr()
    assert main(["concepts", "--store", str(run / "cache.h5"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kinds"] == {"artist": ["klimt", "monet"], "nudity": ["yes"]}
    scores = ConceptScores.load(sae / "concepts.h5")
    assert scores.concepts == ["artist:klimt", "artist:monet", "nudity:yes"] and scores.other_acts is not None
    assert json.loads((sae / "train_config.json").read_text())["device"] == "cpu"


def test_generate_ablates_a_user_concept_and_refuses_an_unknown_one(real_run, tiny_sd_dir, tmp_path, capsys):
    _, sae, _ = real_run
    base = ["generate", "--model", str(tiny_sd_dir), "--prompt", "a nude", "--steps", "3", "--sae", str(sae)]
    assert main([*base, "--ablate", "nudity:yes", "--percentile", "90", "--out", str(tmp_path / "a")]) == 0
    assert len(json.loads((tmp_path / "a" / "index.json").read_text())) == 1
    capsys.readouterr()
    assert main([*base, "--ablate", "style:neon", "--out", str(tmp_path / "b")]) == 2
    assert "unknown concept kind 'style'" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_evaluate_with_a_clip_judge(real_run, tiny_sd_dir, tmp_path, capsys):
    run, sae, clip = real_run
    out = tmp_path / "results.json"
    args = ["evaluate", "--model", str(tiny_sd_dir), "--sae", str(sae), "--targets", "artist:monet,nudity:yes", "--seeds", "5",
            "--steps", "3", "--percentile", "90", "--multiplier", "-5", "--out", str(out)]
    capsys.readouterr()
    assert main(args) == 2  # a model other than minicanvas needs a judge
    assert "--judge clip:MODEL" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--judge", "clip:/no/such/clip"]) == 2
    assert "cannot load the CLIP judge" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--judge", f"clip:{clip}", "--judge-template", "artist=a painting by {value}"]) == 0
    res = json.loads(out.read_text())
    assert set(res["targets"]) == {"artist:monet", "nudity:yes"} and set(res["mean"]) == {"artist", "nudity"}
    assert all(0 <= res["targets"][t][m] <= 100 for t in res["targets"] for m in ("UA", "IRA", "CRA"))
    assert res["config"]["judge"] == f"clip:{clip}" and res["config"]["answer_set"]["prompts"] == 7
    assert set(res["base"]) == {"artist_accuracy", "nudity_accuracy"}
    assert not (tmp_path / "results.json.partial").exists()
