import os
import subprocess
import sys

import pytest
import torch

from tiny_models import diffusers_image, diffusers_pipeline

from saeuron.errors import UserError
from saeuron.pipelines import MiniCanvasPipeline, SamplerConfig, default_guidance, load_pipeline, model_family, resolve_sampler, sample

FAST = SamplerConfig(steps=4, cfg=4.0)


def test_minicanvas_has_sd_block_layout(minicanvas_pipe):
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    assert isinstance(minicanvas_pipe, MiniCanvasPipeline)
    modules = dict(minicanvas_pipe.unet.named_modules())
    for path in ("up_blocks.1.attentions.1", "up_blocks.1.attentions.2"):
        block = modules[path]
        assert isinstance(block, Transformer2DModel)
        assert block.transformer_blocks[0].attn2.is_cross_attention


def test_generation_is_deterministic_per_seed(minicanvas_pipe):
    prompts = ["a star in neon style", "a heart in ocean style", "a star in neon style"]
    a = sample(minicanvas_pipe, prompts, [0, 1, 0], FAST)
    b = sample(minicanvas_pipe, prompts, [0, 1, 0], FAST)
    assert a.shape == (3, 3, 32, 32)
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])
    # an image does not depend on the batch it was made in
    alone = sample(minicanvas_pipe, prompts[:1], [0], FAST)
    torch.testing.assert_close(alone[0], a[0], atol=1e-4, rtol=0)


def test_sampling_with_grad_differentiates_through_every_step_and_gives_the_same_images(minicanvas_pipe):
    from saeuron.hooks import intervene

    gain = torch.ones((), requires_grad=True)  # scales one block's output: d image / d gain flows through all steps
    with intervene(minicanvas_pipe, "up_blocks.1.attentions.1", lambda acts, step, t: acts * gain) as hook:
        images = sample(minicanvas_pipe, ["a star in neon style"], [0], FAST, on_step=hook.on_step, grad=True)
        (grad,) = torch.autograd.grad(images.sum(), gain)
        plain = sample(minicanvas_pipe, ["a star in neon style"], [0], FAST, on_step=hook.on_step)
    assert images.requires_grad and grad != 0 and not plain.requires_grad
    torch.testing.assert_close(images.detach(), plain)


def test_pipeline_save_load_round_trip(minicanvas_pipe, tmp_path):
    minicanvas_pipe.save_pretrained(tmp_path / "copy")
    loaded = load_pipeline(tmp_path / "copy")
    assert isinstance(loaded, MiniCanvasPipeline)
    a = sample(minicanvas_pipe, ["a moon in lava style"], [5], FAST)
    b = sample(loaded, ["a moon in lava style"], [5], FAST)
    assert torch.equal(a, b)
    assert default_guidance(loaded) == default_guidance(minicanvas_pipe)


def test_default_guidance_is_stored_with_the_model(minicanvas_pipe, tmp_path):
    """minicanvas keeps its chosen CFG scale in model_index.json; cfg=None samples with it."""
    import json

    minicanvas_pipe.save_pretrained(tmp_path / "copy")
    index = json.loads((tmp_path / "copy" / "model_index.json").read_text())
    index["default_guidance"] = 2.5
    (tmp_path / "copy" / "model_index.json").write_text(json.dumps(index))
    loaded = load_pipeline(tmp_path / "copy")
    assert default_guidance(loaded) == 2.5 and resolve_sampler(loaded, SamplerConfig()).cfg == 2.5
    fast = SamplerConfig(steps=3)
    assert torch.equal(sample(loaded, ["a moon"], [1], fast), sample(loaded, ["a moon"], [1], SamplerConfig(steps=3, cfg=2.5)))
    assert not torch.equal(sample(loaded, ["a moon"], [1], fast), sample(loaded, ["a moon"], [1], SamplerConfig(steps=3, cfg=4.0)))


@pytest.mark.parametrize("fixture, family", [("tiny_sd_dir", "sd"), ("tiny_sdxl_dir", "sdxl")])
def test_real_model_families_load_and_generate(request, fixture, family):
    pipe = load_pipeline(request.getfixturevalue(fixture))
    assert model_family(pipe) == family and default_guidance(pipe) == 7.5
    images = sample(pipe, ["a photo of a cat", "a dog"], [0, 1], SamplerConfig(steps=2, cfg=7.5))
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()
    assert torch.equal(images, sample(pipe, ["a photo of a cat", "a dog"], [0, 1], SamplerConfig(steps=2, cfg=7.5)))


def test_non_finite_guidance_is_refused(minicanvas_pipe):
    for cfg in (float("nan"), float("inf")):
        with pytest.raises(UserError, match="finite"):
            sample(minicanvas_pipe, ["a star"], [0], SamplerConfig(steps=2, cfg=cfg))


def test_unknown_word_is_a_clear_error(minicanvas_pipe):
    with pytest.raises(UserError, match="unknown word 'cubism'.*styles"):
        sample(minicanvas_pipe, ["a star in cubism style"], [0], FAST)


def test_empty_prompt_list_and_missing_folder_are_clear_errors(minicanvas_pipe, tmp_path):
    with pytest.raises(UserError, match="prompt list is empty"):
        sample(minicanvas_pipe, [], [], FAST)
    with pytest.raises(UserError, match="not found"):
        load_pipeline(tmp_path / "no_such_model")


def test_unreachable_hub_id_is_one_clear_error():
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, "-m", "saeuron.cli", "generate", "--model", "nobody/no-such-model", "--prompt", "a cat",
                          "--out", "/tmp/never"], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 2
    assert "could not load model 'nobody/no-such-model'" in run.stderr
    assert "Traceback" not in run.stderr


GUIDED = SamplerConfig(steps=3, cfg=6.0)


@pytest.mark.parametrize("fixture", ["tiny_sd_dir", "tiny_sd2_dir", "tiny_sdxl_dir", "tiny_sdxl_no_zeros_dir"])
def test_generation_is_what_the_diffusers_pipeline_gives(request, fixture):
    """saeuron's loop equals the pipeline's own call, one image alone and each image of a 2 prompts x 2 seeds batch."""
    folder = request.getfixturevalue(fixture)
    reference, ours = diffusers_pipeline(folder), load_pipeline(folder, device="cpu")
    pairs = [(prompt, seed) for prompt in ("a photo of a cat", "a dog") for seed in (0, 3)]
    expected = [diffusers_image(reference, prompt, seed, GUIDED) for prompt, seed in pairs]
    alone = sample(ours, [pairs[0][0]], [pairs[0][1]], GUIDED)
    torch.testing.assert_close(alone[0], expected[0], atol=1e-3, rtol=0)
    batch = sample(ours, [prompt for prompt, _ in pairs], [seed for _, seed in pairs], GUIDED)
    for image, reference_image in zip(batch, expected):
        torch.testing.assert_close(image, reference_image, atol=1e-3, rtol=0)


@pytest.mark.parametrize("cfg", [1.0, 0.5])
def test_guidance_up_to_one_is_the_conditional_prediction_as_in_diffusers(tiny_sd_dir, cfg):
    """diffusers turns CFG off at a scale <= 1; saeuron follows it, although its UNet still sees both halves."""
    config = SamplerConfig(steps=3, cfg=cfg)
    ours = sample(load_pipeline(tiny_sd_dir, device="cpu"), ["a dog"], [2], config)[0]
    torch.testing.assert_close(ours, diffusers_image(diffusers_pipeline(tiny_sd_dir), "a dog", 2, config), atol=1e-3, rtol=0)


@pytest.mark.parametrize("fixture", ["tiny_sd_dir", "tiny_sd2_dir", "tiny_sdxl_dir"])
def test_float16_sampling_is_what_the_diffusers_pipeline_gives(request, fixture):
    """float16 details (noise drawn in float16, only SDXL upcasting its VAE, denormalizing before the cast to float, the
    UNet's memory layout) match too, through `load_pipeline(..., dtype=float16)`."""
    folder = request.getfixturevalue(fixture)
    ours = sample(load_pipeline(folder, torch.float16, "cpu"), ["a dog"], [2], GUIDED)[0]
    torch.testing.assert_close(ours, diffusers_image(diffusers_pipeline(folder, torch.float16), "a dog", 2, GUIDED), atol=1e-4, rtol=0)
