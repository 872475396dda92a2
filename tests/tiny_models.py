"""Tiny random-weight Stable Diffusion 1.x, 2.x and XL pipelines built from configs (no downloads)."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch


def tiny_clip_tokenizer(folder: Path):
    """A character-level CLIP BPE tokenizer written to `folder`."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits + ".,!?'-")
    vocab = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16, pad_token="<|endoftext|>")


def _text_encoder(vocab_size: int, with_projection: bool = False, hidden: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, projection_dim=hidden,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg)


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
                         down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                         up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), sample_size=32)


def tiny_sd_pipeline(folder: Path):
    """A random-weight StableDiffusionPipeline (SD 1.x layout: 4 levels, cross-attn in 3), saved to `folder`."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    tok = tiny_clip_tokenizer(folder / "_tok")
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 16, 32, 32), norm_num_groups=8, cross_attention_dim=32,
                                attention_head_dim=4,
                                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
    pipe = StableDiffusionPipeline(vae=_vae(), text_encoder=_text_encoder(len(tok.get_vocab())), tokenizer=tok, unet=unet,
                                   scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def tiny_sd2_pipeline(folder: Path):
    """A random-weight SD 2.x-style pipeline (v-prediction, linear projections, per-block head sizes, upcast attention as in
    SD 2.1), saved to `folder`."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    tok = tiny_clip_tokenizer(folder / "_tok")
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=32,
                                attention_head_dim=(2, 4), use_linear_projection=True, upcast_attention=True,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=_vae(), text_encoder=_text_encoder(len(tok.get_vocab())), tokenizer=tok, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def tiny_sdxl_pipeline(folder: Path, force_zeros_for_empty_prompt: bool = True):
    """A random-weight StableDiffusionXLPipeline (two text encoders, text_time conditioning), saved to `folder`.

    force_zeros_for_empty_prompt=True (diffusers' default, SDXL base's setting) gives the unconditional half zero embeddings;
    False encodes the empty prompt instead."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    tok = tiny_clip_tokenizer(folder / "_tok")
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=64,
                                attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2),
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                addition_embed_type="text_time", addition_time_embed_dim=8,
                                projection_class_embeddings_input_dim=6 * 8 + 32, use_linear_projection=True)
    v = len(tok.get_vocab())
    pipe = StableDiffusionXLPipeline(vae=_vae(), text_encoder=_text_encoder(v), text_encoder_2=_text_encoder(v, True),
                                     tokenizer=tok, tokenizer_2=tok, unet=unet, scheduler=EulerDiscreteScheduler(),
                                     force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)
    pipe.save_pretrained(folder)
    return folder


def diffusers_pipeline(folder, dtype: torch.dtype = torch.float32):
    """The folder loaded by diffusers itself, with the DDIM scheduler load_pipeline gives it."""
    from diffusers import DDIMScheduler, DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder, dtype=dtype)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_image(pipe, prompt: str, seed: int, config) -> torch.Tensor:
    """The pipeline's own call with its defaults (negative prompt, size, SDXL conditioning), as 3 x H x W floats."""
    image = pipe(prompt, generator=torch.Generator().manual_seed(seed), num_inference_steps=config.steps, guidance_scale=config.cfg,
                 output_type="np").images[0]
    return torch.from_numpy(image).permute(2, 0, 1)
