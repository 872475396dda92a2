"""Every unlearning method under the one contract: it moves its target, keeps another concept, is deterministic for a
seed, and its folder works through `generate --unlearned` / `evaluate --unlearned`."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from saeuron.cli import main
from saeuron.concept_set import ConceptSet
from saeuron.errors import UserError
from saeuron.methods import get_method, methods
from saeuron.pipelines import SamplerConfig
from saeuron.unlearn import RECORD_FILE, load_unlearned, unlearn

# the module fixture `fitted` trains every weight method once (about 5 minutes alone on 2 cores), inside the first test's
# setup: a slower or busier machine needs more than the suite's default 900 s per test
pytestmark = pytest.mark.timeout(2400)

TARGET = "style:neon"
KEPT = "style:sunset"
OBJECTS = ("star", "circle", "square", "heart", "ring")
FAST = SamplerConfig(steps=10, batch_size=64)
# each method's cheap setting for the tests (the bench uses the defaults)
QUICK = {  # calibrated on seeds 100-101 (tests/test_methods.py's images): each erases neon and keeps sunset there
    "esd-x": ["iterations=30", "bank_seeds=1", "steps=10", "lr=0.0005"],
    "esd-u": ["iterations=30", "bank_seeds=1", "steps=10", "lr=0.0005"],
    "uce": [],
    "ca": ["iterations=60", "anchor_images=1", "steps=10", "lr=0.002"],
    "spm": ["iterations=60", "bank_seeds=1", "steps=10", "lr=0.01", "la_strength=10"],
    "unguide": ["iterations=60", "bank_seeds=1", "steps=10", "lr=0.01", "repeats=2"],
    "sa": ["iterations=60", "replay_seeds=1", "fisher_timesteps=4", "steps=10", "lr=0.001"],
}


def _style_probability(pipe, images, style: str) -> float:
    from saeuron.minicanvas.classifier import classify

    return float(sum(label.style == style for label in classify(images)) / len(images))


def _style_share(generate, pipe, style: str) -> float:
    """Share of 'a {object} in {style} style' images (5 objects x 2 seeds) classified as that style."""
    prompts = [f"a {o} in {style.split(':')[1]} style" for o in OBJECTS for _ in range(2)]
    seeds = [s for _ in OBJECTS for s in (100, 101)]
    return _style_probability(pipe, generate(prompts, seeds), style.split(":")[1])


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, minicanvas_pipe):
    """Each weight method fitted once on the target with its quick setting."""
    root = tmp_path_factory.mktemp("unlearned")
    cs = ConceptSet.minicanvas()
    return {name: (root / name, unlearn(name, [TARGET], root / name, minicanvas_pipe, "minicanvas", cs, 0, QUICK[name], log=lambda s: None))
            for name in QUICK}


def test_every_method_is_registered():
    assert set(methods()) == {"saeuron", "esd-x", "esd-u", "uce", "ca", "spm", "unguide", "sa"}
    for m in methods().values():
        assert m.summary and m.defaults


@pytest.mark.parametrize("name", list(QUICK))
def test_method_moves_its_target_and_keeps_another_concept(fitted, minicanvas_pipe, name):
    from saeuron.pipelines import sample

    folder, record = fitted[name]
    assert record["method"] == name and record["targets"] == [TARGET] and record["wall_time_s"] > 0 and record["storage_bytes"] > 0
    unlearned = load_unlearned(folder, minicanvas_pipe)
    base = lambda ps, ss: sample(minicanvas_pipe, ps, ss, FAST)  # noqa: E731
    edited = lambda ps, ss: unlearned.generate(minicanvas_pipe, ps, ss, FAST)  # noqa: E731
    assert _style_share(base, minicanvas_pipe, TARGET) >= 0.9
    assert _style_share(edited, minicanvas_pipe, TARGET) <= 0.5, f"{name} left the target"
    assert _style_share(edited, minicanvas_pipe, KEPT) >= 0.8, f"{name} lost a kept style"
    # fitting and applying a folder leave the base pipeline as it was: the same modules, the same images
    assert not any("lora" in n or "base_layer" in n for n, _ in minicanvas_pipe.unet.named_parameters())
    torch.testing.assert_close(sample(minicanvas_pipe, ["a star in neon style"], [3], FAST), base(["a star in neon style"], [3]))


@pytest.mark.parametrize("name", ["esd-x", "spm", "unguide", "sa"])
def test_method_is_deterministic_for_a_seed(fitted, tmp_path, minicanvas_pipe, name):
    folder, record = fitted[name]
    again = unlearn(name, [TARGET], tmp_path / "again", minicanvas_pipe, "minicanvas", ConceptSet.minicanvas(), 0, QUICK[name], log=lambda s: None)
    first, second = load_file(str(folder / record["weights"])), load_file(str(tmp_path / "again" / again["weights"]))
    assert first.keys() == second.keys()
    for k in first:
        torch.testing.assert_close(first[k], second[k], atol=0, rtol=0)


def test_record_says_what_was_run(fitted):
    folder, record = fitted["esd-x"]
    stored = json.loads((folder / RECORD_FILE).read_text())
    assert stored["params"]["iterations"] == 30 and stored["params"]["lr"] == 5e-4 and stored["paper"]["lr"] == 1e-5
    assert "batch_size" in stored["deviations"] and "lr" not in stored["deviations"]  # a default unlike the paper's; an override
    assert stored["base_model"]["name"] == "minicanvas" and stored["peak_memory_mb"] > 0
    assert get_method("esd-x").defaults["iterations"].paper == 1000


def test_unlearned_folder_through_generate_and_evaluate(fitted, tmp_path, capsys):
    folder, _ = fitted["uce"]
    assert main(["generate", "--unlearned", str(folder), "--prompt", "a star in neon style", "--seeds", "0,1", "--steps", "10",
                 "--out", str(tmp_path / "images")]) == 0
    assert len(json.loads((tmp_path / "images" / "index.json").read_text())) == 2
    out = tmp_path / "results.json"
    assert main(["evaluate", "--unlearned", str(folder), "--seeds", "100", "--steps", "10", "--out", str(out),
                 "--report", str(tmp_path / "report")]) == 0
    results = json.loads(out.read_text())
    assert results["config"]["method"] == "uce" and results["targets"][TARGET]["UA"] >= 80
    assert "| uce |" in capsys.readouterr().out and (tmp_path / "report" / "report.md").exists()


def test_saeuron_folder_names_its_sae_and_settings(tiny_run, tmp_path, minicanvas_pipe):
    from conftest import TINY_HOOKPOINT

    sae = tiny_run / "saes" / TINY_HOOKPOINT
    record = unlearn("saeuron", [TARGET], tmp_path / "sae_ul", minicanvas_pipe, "minicanvas", ConceptSet.minicanvas(), 0,
                     ["multiplier=-5", "percentile=99"], sae=str(sae), log=lambda s: None)
    (site_record,) = record["sites"]
    assert site_record["settings"][TARGET]["multiplier"] == -5.0 and record["features"] > 0 and site_record["sae"] == str(sae.resolve())
    unlearned = load_unlearned(tmp_path / "sae_ul", minicanvas_pipe)
    from saeuron.ablate import load_ablation_site

    site = load_ablation_site(sae, minicanvas_pipe)
    plan = site.plan([TARGET], multiplier=-5.0, percentile=99.0)
    prompts, seeds = ["a star in neon style", "a ring in lava style"], [0, 1]
    torch.testing.assert_close(unlearned.generate(minicanvas_pipe, prompts, seeds, FAST), site.sample(minicanvas_pipe, plan, prompts, seeds, FAST))


def test_saeuron_folder_ablates_at_several_sites_in_one_pass(tiny_run, tmp_path, minicanvas_pipe):
    """`--sae A,B`: each SAE ablates at its own hookpoint with its own settings, in the same sampling pass."""
    import shutil

    from conftest import TINY_HOOKPOINT
    from saeuron.ablate import ablations_applied, load_ablation_site
    from saeuron.pipelines import sample

    first = tiny_run / "saes" / TINY_HOOKPOINT
    second = tmp_path / "second"  # the same SAE, declared at another 64-wide block: a second site to test the plumbing
    shutil.copytree(first, second)
    cfg = json.loads((second / "train_config.json").read_text())
    (second / "train_config.json").write_text(json.dumps({**cfg, "hookpoint": "up_blocks.1.attentions.1"}))
    own = [{TARGET: {"percentile": 99.0, "multiplier": -5.0, "dominance": 0.0, "start": 0.0}},
           {TARGET: {"percentile": 98.0, "multiplier": -2.0, "dominance": 0.0, "start": 0.5}}]
    record = unlearn("saeuron", [TARGET], tmp_path / "two", minicanvas_pipe, "minicanvas", ConceptSet.minicanvas(), 0,
                     sae=[str(first), str(second)], site_settings=own, log=lambda s: None)
    assert [s["hookpoint"] for s in record["sites"]] == [TINY_HOOKPOINT, "up_blocks.1.attentions.1"]
    assert [s["settings"] for s in record["sites"]] == own and record["features"] == sum(s["features"] for s in record["sites"])
    prompts, seeds = ["a star in neon style"], [0]
    sites = [load_ablation_site(d, minicanvas_pipe) for d in (first, second)]
    edits = [(site.sae, site.hookpoint, site.plan([TARGET], params=o), site.capture) for site, o in zip(sites, own)]
    with torch.no_grad(), ablations_applied(minicanvas_pipe, edits) as on_step:
        expected = sample(minicanvas_pipe, prompts, seeds, FAST, on_step=on_step)
    both = load_unlearned(tmp_path / "two", minicanvas_pipe).generate(minicanvas_pipe, prompts, seeds, FAST)
    torch.testing.assert_close(both, expected)
    assert not torch.equal(both, sites[0].sample(minicanvas_pipe, edits[0][2], prompts, seeds, FAST))  # the second site acts
    with pytest.raises(UserError, match="two SAEs of"):
        unlearn("saeuron", [TARGET], tmp_path / "dup", minicanvas_pipe, "minicanvas", ConceptSet.minicanvas(), 0,
                sae=[str(first), str(first)], log=lambda s: None)
    # DIR@KIND: each site ablates the targets of its kind (styles at one block, objects at another, as the paper)
    record = unlearn("saeuron", [TARGET, "object:star"], tmp_path / "kinds", minicanvas_pipe, "minicanvas", ConceptSet.minicanvas(),
                     0, sae=f"{first}@style,{second}@object", log=lambda s: None)
    assert [s["targets"] for s in record["sites"]] == [[TARGET], ["object:star"]]
    assert list(record["sites"][1]["settings"]) == ["object:star"]
    shown = load_unlearned(tmp_path / "kinds").target_params("object:star")  # what results.json and the report show
    assert shown["hookpoint"] == "up_blocks.1.attentions.1" and shown["percentile"] == record["sites"][1]["settings"]["object:star"]["percentile"]
    for bad, match in ((f"{first}@object", "no --sae ablates style:neon"), (f"{first}@", "bad --sae entry"),
                       (f"{first}@style,{second}@artist", "none of the targets")):
        with pytest.raises(UserError, match=match):
            unlearn("saeuron", [TARGET, "object:star"], tmp_path / "bad", minicanvas_pipe, "minicanvas", ConceptSet.minicanvas(), 0,
                    sae=bad, log=lambda s: None)


def test_saeuron_folder_refuses_the_seeds_its_choices_looked_at(tiny_run, tmp_path, minicanvas_pipe, capsys):
    """`evaluate --unlearned` on a SAeUron folder refuses its scores' cache seeds and the seeds its tuned values came from."""
    import shutil

    from conftest import TINY_HOOKPOINT

    sae = tmp_path / "sae"
    shutil.copytree(tiny_run / "saes" / TINY_HOOKPOINT, sae)
    (sae / "tuned.json").write_text(json.dumps({TARGET: {"percentile": 99.0, "multiplier": -5.0, "tune_seeds": [100]}}))
    record = unlearn("saeuron", [TARGET], tmp_path / "ul", minicanvas_pipe, "minicanvas", ConceptSet.minicanvas(), 0,
                     sae=str(sae), log=lambda s: None)
    assert record["sites"][0]["tune_seeds"] == {TARGET: [100]} and record["sites"][0]["settings"][TARGET]["multiplier"] == -5.0
    for seeds, message in (("1", "used to compute the concept scores"), ("100", "tuned on seeds [100]")):
        out = tmp_path / f"r{seeds}.json"
        assert main(["evaluate", "--unlearned", str(tmp_path / "ul"), "--seeds", seeds, "--out", str(out)]) == 2
        assert message in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("name, settings", [("uce", []), ("esd-x", ["iterations=3", "bank_seeds=1", "steps=3", "batch_size=2"]),
                                            ("spm", ["iterations=3", "bank_seeds=1", "steps=3", "batch_size=2", "anchors=1"]),
                                            ("ca", ["iterations=3", "anchor_images=1", "steps=3", "batch_size=2"]),
                                            ("unguide", ["iterations=3", "bank_seeds=1", "steps=3", "batch_size=2", "repeats=1",
                                                         "stability_step=1"]),
                                            ("sa", ["iterations=3", "replay_seeds=1", "fisher_timesteps=2", "steps=3", "batch_size=2"]),
                                            ("sa", ["iterations=3", "replay_seeds=1", "fisher_timesteps=2", "steps=3", "batch_size=2",
                                                    "surrogate=noise", "group=xattn"])])
def test_methods_run_on_a_stable_diffusion_pipeline(tiny_sd_dir, tmp_path, name, settings):
    """The real-model path: a tiny random SD 1.x pipeline, a labelled CSV, the CLI end to end."""
    from pathlib import Path

    prompts = Path(__file__).parents[1] / "examples" / "sd_prompts.csv"
    folder = tmp_path / name
    argv = ["unlearn", "--method", name, "--model", str(tiny_sd_dir), "--prompts", str(prompts), "--targets", "artist:van gogh",
            "--out", str(folder), "--device", "cpu"] + [a for s in settings for a in ("--set", s)]
    assert main(argv) == 0
    assert main(["generate", "--model", str(tiny_sd_dir), "--unlearned", str(folder), "--prompt", "a painting of a dog by Vincent van Gogh",
                 "--steps", "3", "--out", str(tmp_path / "images")]) == 0
    assert (tmp_path / "images" / "index.json").exists()


def test_spm_transport_is_full_on_the_concept_word_and_partial_elsewhere(minicanvas_pipe):
    from saeuron.methods.spm import transport

    m = transport(minicanvas_pipe, ["a star in neon style", "a star in sunset style", "a star"], [TARGET])
    assert m[0] == 1 and 0 <= m[1] < 1 and 0 <= m[2] < 1


def test_unguidance_weights_pick_the_base_model_or_the_lora(fitted, minicanvas_pipe, tmp_path):
    """eps = w base + (1 - w) LoRA: w = 1 on every prompt is the base model, w = 0 the LoRA alone, and the stability
    score flags the target's prompts above the empty prompt."""
    import shutil

    from saeuron.methods.base import loaded_adapter
    from saeuron.methods.unguide import stability_scores
    from saeuron.pipelines import sample

    folder, record = fitted["unguide"]
    prompts, seeds = ["a star in neon style", "a ring in sunset style"], [3, 4]
    for w, reference in ((1.0, "base"), (0.0, "lora")):
        copy = tmp_path / f"w{w}"
        shutil.copytree(folder, copy)
        rec = json.loads((copy / RECORD_FILE).read_text())
        rec["params"].update(w_flagged=w, w_other=w)
        (copy / RECORD_FILE).write_text(json.dumps(rec))
        got = load_unlearned(copy, minicanvas_pipe).generate(minicanvas_pipe, prompts, seeds, FAST)
        if reference == "base":
            want = sample(minicanvas_pipe, prompts, seeds, FAST)
        else:
            with loaded_adapter(minicanvas_pipe.unet, folder, record, "unguide"):
                want = sample(minicanvas_pipe, prompts, seeds, FAST)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    with loaded_adapter(minicanvas_pipe.unet, folder, record, "unguide"):
        scores = stability_scores(minicanvas_pipe, ["a star in neon style", "a ring in neon style", ""], record["params"])
    assert scores["a star in neon style"] > scores[""] and scores["a ring in neon style"] > scores[""]


def test_selective_amnesia_computes_the_base_store_once(fitted, minicanvas_pipe):
    """The Fisher and replay samples are the base model's: a second target reuses them; the Fisher is a mean of squared
    gradients (nonnegative, nonzero) over every UNet parameter, and the record names the store."""
    from safetensors.torch import load_file

    from saeuron.methods.sa import STORE_DIR

    folder, record = fitted["sa"]
    stores = list((folder.parent / STORE_DIR).glob("*/fisher.safetensors"))
    assert len(stores) == 1 and record["base_store"] == str(stores[0].parent.resolve())
    fisher = load_file(str(stores[0]))
    assert set(fisher) == {n for n, _ in minicanvas_pipe.unet.named_parameters()}
    assert all(bool((v >= 0).all()) for v in fisher.values()) and sum(float(v.sum()) for v in fisher.values()) > 0
    logged = []
    again = unlearn("sa", ["style:ocean"], folder.parent / "sa-ocean", minicanvas_pipe, "minicanvas", ConceptSet.minicanvas(), 0,
                    QUICK["sa"] + ["iterations=2"], log=logged.append)
    assert again["base_store"] == record["base_store"] and not any("computing" in line for line in logged)
    assert len(list((folder.parent / STORE_DIR).glob("*/fisher.safetensors"))) == 1


def test_unguide_gate_sees_the_embeddings_not_the_words(fitted, minicanvas_pipe):
    """An attacker's embeddings face UnGuide's gate: with neon's embedding swapped for sunset's after the folder is
    applied (as `saeuron attack` does), "a star in neon style" generates exactly as "a star in sunset style"."""
    from saeuron.attack import EmbeddingOverride, prompt_ids, word_positions
    from saeuron.pipelines import sample

    unlearned = load_unlearned(fitted["unguide"][0], minicanvas_pipe)
    prompt, table = "a star in neon style", minicanvas_pipe.text_encoder.get_input_embeddings().weight.detach()
    sunset = table[minicanvas_pipe.tokenizer("sunset", add_special_tokens=False).input_ids]
    with unlearned.applied(minicanvas_pipe, [prompt], FAST) as hooks, EmbeddingOverride(minicanvas_pipe) as override:
        override.set(prompt_ids(minicanvas_pipe, prompt), word_positions(minicanvas_pipe, prompt, ["neon"]), sunset)
        disguised = sample(minicanvas_pipe, [prompt], [3], FAST, on_step=hooks.on_step, on_batch=hooks.on_batch)
    torch.testing.assert_close(disguised, unlearned.generate(minicanvas_pipe, ["a star in sunset style"], [3], FAST))


def test_sequential_unlearning_chains_weight_edits(fitted, tmp_path, minicanvas_pipe, capsys):
    """`--after`: UCE on ocean fitted on the neon-erased model erases both, keeps sunset; the chain is refused where a
    method edits no weights, where a target repeats, and where a folder of the chain is gone."""
    import shutil

    neon, _ = fitted["uce"]
    both = tmp_path / "both"
    record = unlearn("uce", ["style:ocean"], both, minicanvas_pipe, "minicanvas", ConceptSet.minicanvas(), 0, [], log=lambda s: None, after=neon)
    assert record["targets"] == ["style:ocean"] and record["after"] == str(neon.resolve())
    chained = load_unlearned(both, minicanvas_pipe)
    assert chained.targets == [TARGET, "style:ocean"] and [u.folder for u in chained.chain] == [neon, both]
    edited = lambda ps, ss: chained.generate(minicanvas_pipe, ps, ss, FAST)  # noqa: E731
    assert _style_share(edited, minicanvas_pipe, TARGET) <= 0.5 and _style_share(edited, minicanvas_pipe, "style:ocean") <= 0.5
    assert _style_share(edited, minicanvas_pipe, KEPT) >= 0.8
    for argv, message in (
        (["--method", "saeuron", "--targets", "style:ocean", "--after", str(neon)],
         "chains weight edits (esd-x, esd-u, uce, ca, sa) or composes adapters of one method (spm, unguide), not saeuron"),
        (["--method", "spm", "--targets", "style:ocean", "--after", str(neon)], "spm composes only with spm folders"),
        (["--method", "uce", "--targets", TARGET, "--after", str(neon)], "already erases style:neon"),
        (["--method", "uce", "--targets", "style:lava", "--after", str(tmp_path / "nowhere")], "not found"),
    ):
        out = tmp_path / "refused"
        assert main(["unlearn", *argv, "--out", str(out)]) == 2 and message in capsys.readouterr().err and not out.exists()
    moved = tmp_path / "moved"
    shutil.copytree(both, moved)
    shutil.copytree(neon, tmp_path / "neon_copy")
    rec = json.loads((moved / RECORD_FILE).read_text())
    rec["after"] = str(tmp_path / "gone")
    (moved / RECORD_FILE).write_text(json.dumps(rec))
    with pytest.raises(Exception, match="not found"):
        load_unlearned(moved, minicanvas_pipe).targets


# UnGuide's quick LoRAs are blunt (neon's alone also takes ocean, lava and forest on seeds 100-101), so its second
# style is one that neon's LoRA keeps; its kept styles are not asserted here (the bench measures IRA)
@pytest.mark.parametrize("name, second", [("spm", "style:ocean"), ("unguide", "style:noir")])
def test_adapter_methods_compose_in_sequence(name, second, fitted, tmp_path, minicanvas_pipe, capsys):
    """`--after` for SPM and UnGuide: a second adapter, fitted on the base model, acts beside neon's (SPM: each with its
    own transport; UnGuide: one gate over both LoRAs, each scoring alone): both styles go (SPM: sunset stays), the UNet
    is plain afterwards; weight methods do not chain after them."""
    from saeuron.methods.base import loaded_adapter
    from saeuron.methods.unguide import stability_scores

    neon, neon_record = fitted[name]
    both = tmp_path / "both"
    record = unlearn(name, [second], both, minicanvas_pipe, "minicanvas", ConceptSet.minicanvas(), 0, QUICK[name],
                     log=lambda s: None, after=neon)
    assert record["after"] == str(neon.resolve())
    composed = load_unlearned(both, minicanvas_pipe)
    assert composed.targets == [TARGET, second]
    with composed.applied(minicanvas_pipe, ["a star in ocean style"], FAST):
        assert set(minicanvas_pipe.unet.active_adapters()) == {name, f"{name}_2"}
    assert not getattr(minicanvas_pipe.unet, "peft_config", None)
    if name == "unguide":  # each LoRA's score in the composition is its score alone
        prompts, unet = ["a star in neon style", "a star in noir style", ""], minicanvas_pipe.unet
        with loaded_adapter(unet, neon, neon_record, name):
            alone = stability_scores(minicanvas_pipe, prompts, neon_record["params"])
            with loaded_adapter(unet, both, record, name) as other:
                together = stability_scores(minicanvas_pipe, prompts, neon_record["params"], [name, other])
        assert together[name] == pytest.approx(alone, rel=1e-4) and together[name] != together[other]
    edited = lambda ps, ss: composed.generate(minicanvas_pipe, ps, ss, FAST)  # noqa: E731
    first_only = lambda ps, ss: load_unlearned(neon, minicanvas_pipe).generate(minicanvas_pipe, ps, ss, FAST)  # noqa: E731
    assert _style_share(first_only, minicanvas_pipe, second) >= 0.8
    assert _style_share(edited, minicanvas_pipe, TARGET) <= 0.5 and _style_share(edited, minicanvas_pipe, second) <= 0.5
    if name == "spm":
        assert _style_share(edited, minicanvas_pipe, KEPT) >= 0.8
    out = tmp_path / "refused"
    assert main(["unlearn", "--method", "uce", "--targets", "style:lava", "--after", str(both), "--out", str(out)]) == 2
    assert "which edits no weights" in capsys.readouterr().err and not out.exists()
