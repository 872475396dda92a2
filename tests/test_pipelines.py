import os
import subprocess
import sys

import pytest
import torch

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


@pytest.mark.parametrize("fixture", ["tiny_sd_dir", "tiny_sd2_dir", "tiny_sdxl_dir", "tiny_sdxl_zeros_dir"])
def test_generation_is_what_the_diffusers_pipeline_gives(request, fixture):
    """DDIM through saeuron's loop equals the pipeline's own call (its defaults: negative prompt, size, SDXL conditioning),
    one image at a time and in a batch of prompts x seeds."""
    from diffusers import DDIMScheduler, DiffusionPipeline

    folder = request.getfixturevalue(fixture)
    reference = DiffusionPipeline.from_pretrained(folder)
    reference.scheduler = DDIMScheduler.from_config(reference.scheduler.config)
    reference.set_progress_bar_config(disable=True)
    ours = load_pipeline(folder, device="cpu")
    pairs = [("a photo of a cat", 0), ("a dog", 3), ("a photo of a cat", 3)]
    batch = sample(ours, [p for p, _ in pairs], [s for _, s in pairs], SamplerConfig(steps=4, cfg=6.0))
    for (prompt, seed), image in zip(pairs, batch):
        expected = reference(prompt, generator=torch.Generator().manual_seed(seed), num_inference_steps=4, guidance_scale=6.0,
                             output_type="np").images[0]
        alone = sample(ours, [prompt], [seed], SamplerConfig(steps=4, cfg=6.0))[0]
        expected = torch.from_numpy(expected).permute(2, 0, 1)
        assert (alone - expected).abs().max() < 1e-3 and (image - expected).abs().max() < 1e-3
