"""`saeuron attack`: the attacker's positions, the embedding override, gradients through every method (SAeUron's hook
included), and the command's files and refusals."""

from __future__ import annotations

import json

import pytest
import torch

from saeuron.attack import AttackConfig, EmbeddingOverride, denoising_loss, free_positions, prompt_ids, run_attack, sampler_schedule, \
    word_positions
from saeuron.cli import main
from saeuron.concept_set import ConceptSet
from saeuron.methods.base import SampleHooks
from saeuron.pipelines import SamplerConfig, prompt_conditions, sample
from saeuron.unlearn import load_unlearned, unlearn

FAST = SamplerConfig(steps=6, batch_size=64)
TARGET = "style:neon"


@pytest.fixture(scope="module")
def uce_folder(tmp_path_factory, minicanvas_pipe):
    folder = tmp_path_factory.mktemp("attack") / "uce"
    unlearn("uce", [TARGET], folder, minicanvas_pipe, "minicanvas", ConceptSet.minicanvas(), 0, [], log=lambda s: None)
    return folder


def test_the_attacker_holds_the_template_words_and_free_slots_not_the_concept_words(minicanvas_pipe):
    prompt = "a star in neon style"  # <bos> a star in neon style <eos> <pad>
    assert free_positions(minicanvas_pipe, prompt, ["star", "neon"], free_pads=5) == [1, 3, 5, 7]
    assert free_positions(minicanvas_pipe, prompt, ["star", "neon"], free_pads=0) == [1, 3, 5]
    assert word_positions(minicanvas_pipe, prompt, ["neon"]) == [4]


def test_override_changes_only_its_prompt_and_not_the_unconditional_half(minicanvas_pipe):
    from saeuron.pipelines import _unet_conditions

    prompts = ["a star in neon style", "a ring in neon style"]
    plain = _unet_conditions(minicanvas_pipe, prompts, 32, 32)["encoder_hidden_states"]
    with EmbeddingOverride(minicanvas_pipe) as override:
        override.set(prompt_ids(minicanvas_pipe, prompts[0]), [4], torch.zeros(1, 64))
        edited = _unet_conditions(minicanvas_pipe, prompts, 32, 32)["encoder_hidden_states"]
        override.enabled = False
        off = _unet_conditions(minicanvas_pipe, prompts, 32, 32)["encoder_hidden_states"]
    assert not torch.allclose(edited[2], plain[2])  # row 2: the first prompt's conditional half
    torch.testing.assert_close(edited[[0, 1, 3]], plain[[0, 1, 3]])
    torch.testing.assert_close(off, plain)


def test_override_reaches_a_stable_diffusion_text_encoder(tiny_sd_dir):
    from saeuron.pipelines import load_pipeline

    pipe = load_pipeline(str(tiny_sd_dir))
    prompt = "a painting of a dog"
    plain = prompt_conditions(pipe, [prompt])["encoder_hidden_states"]
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    with EmbeddingOverride(pipe) as override:
        override.set(prompt_ids(pipe, prompt), [1, 2], torch.zeros(2, width))
        assert not torch.allclose(prompt_conditions(pipe, [prompt])["encoder_hidden_states"], plain)


def test_gradients_flow_through_saeurons_ablation(tiny_run, tmp_path, minicanvas_pipe):
    """The attack differentiates through SAeUron's hook, as the paper's evaluation does: the loss sees the ablation."""
    from conftest import TINY_HOOKPOINT

    folder = tmp_path / "sae_ul"
    unlearn("saeuron", [TARGET], folder, minicanvas_pipe, "minicanvas", ConceptSet.minicanvas(), 0,
            ["multiplier=-20", "percentile=90"], sae=str(tiny_run / "saes" / TINY_HOOKPOINT), log=lambda s: None)
    unlearned = load_unlearned(folder, minicanvas_pipe)
    prompts = ["a star in neon style", "a ring in neon style"]
    x0 = sample(minicanvas_pipe, prompts, [400, 401], FAST, decode=False)
    vectors = torch.zeros(2, 64, requires_grad=True)

    def loss(hooks):
        with EmbeddingOverride(minicanvas_pipe) as override:
            for i, p in enumerate(prompts):
                override.set(prompt_ids(minicanvas_pipe, p), [1 + 2 * i], vectors[i:i + 1])
            schedule = sampler_schedule(minicanvas_pipe, FAST.steps, x0.device)
            return denoising_loss(minicanvas_pipe, hooks, schedule, x0, prompt_conditions(minicanvas_pipe, prompts),
                                  torch.Generator().manual_seed(0))

    with unlearned.applied(minicanvas_pipe, prompts, FAST) as hooks:
        ablated = loss(hooks)
        ablated.backward()
    assert vectors.grad is not None and vectors.grad.abs().sum() > 0
    plain = loss(SampleHooks())
    assert not torch.isclose(ablated.detach(), plain.detach())


def test_attack_writes_its_folder_and_leaves_the_base_model(uce_folder, tmp_path, minicanvas_pipe):
    before = sample(minicanvas_pipe, ["a star in neon style"], [3], FAST)
    out = tmp_path / "att"
    for attack in ("unlearndiffatk", "inversion"):
        res = run_attack(uce_folder, [TARGET], [300], AttackConfig(attack, iterations=3, image_seeds=(400,)), FAST,
                         out / attack, minicanvas_pipe, log=lambda s: None)
        r = res["targets"][TARGET]
        assert res["method"] == "uce" and len(r["per_prompt"]) == 10 and 0 <= r["UA_after"] <= 100 and r["seconds"] > 0
        assert {p.name for p in (out / attack).iterdir()} == {"attack.json", "embeddings.safetensors", "style-neon.png"}
        assert json.loads((out / attack / "attack.json").read_text())["targets"][TARGET]["UA_before"] == r["UA_before"]
    assert not list(out.glob("*.partial"))
    torch.testing.assert_close(sample(minicanvas_pipe, ["a star in neon style"], [3], FAST), before)


@pytest.mark.parametrize("extra, message", [
    (["--attack", "pgd"], "unknown attack 'pgd'"),
    (["--attack", "inversion", "--targets", "style:ocean"], "bad target 'style:ocean'"),
    (["--attack", "inversion", "--seeds", "400"], "also the attack's image seeds"),
])
def test_attack_refuses_bad_input_and_writes_nothing(uce_folder, tmp_path, capsys, extra, message):
    out = tmp_path / "att"
    assert main(["attack", "--unlearned", str(uce_folder), "--out", str(out), "--iterations", "1", *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob("*.partial"))
