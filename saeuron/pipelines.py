"""Load a text-to-image model by name or path and sample from it with one denoising loop.

`minicanvas` (shipped, CPU) is the default; any diffusers Stable Diffusion 1.x/2.x/XL
pipeline from a local folder or hub id goes through the same loop. The loop runs the UNet
once per step on the CFG batch `[uncond; cond]`, so hooks see both branches, and calls
`on_step(step_index, timestep)` before each UNet call so hooks know where they are.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from diffusers import DDIMScheduler, DiffusionPipeline

from .errors import UserError, read_json

MINICANVAS = "minicanvas"
CFG_BRANCHES = ("uncond", "cond")  # order of the two halves of the CFG batch


@dataclass(frozen=True)
class SamplerConfig:
    """How images are sampled: DDIM steps, CFG scale, size, batch size (None = the model's default)."""

    steps: int = 25
    cfg: float | None = None  # see default_guidance
    height: int | None = None
    width: int | None = None
    batch_size: int = 50


SD_DEFAULT_GUIDANCE = 7.5  # diffusers' default for Stable Diffusion 1.x/2.x/XL


class MiniCanvasPipeline(DiffusionPipeline):
    """The shipped pixel-space text-to-image pipeline (UNet + CLIP text encoder + DDIM).

    `default_guidance` (saved in model_index.json) is the CFG scale chosen for these weights
    by `scripts/bench_minicanvas.py --pick-cfg`.
    """

    def __init__(self, unet, scheduler, text_encoder, tokenizer, default_guidance: float = 4.0):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer)
        self.register_to_config(default_guidance=float(default_guidance))

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], seeds: Sequence[int], config: SamplerConfig = SamplerConfig()):
        """Generate images (float N x 3 x H x W in [0, 1]) for prompts x seeds pairs."""
        return sample(self, prompts, seeds, config)


def default_guidance(pipe) -> float:
    """The CFG scale a model is sampled with unless one is given: minicanvas stores its own, SD uses 7.5."""
    return float(pipe.config.get("default_guidance") or SD_DEFAULT_GUIDANCE)


def resolve_sampler(pipe, config: SamplerConfig) -> SamplerConfig:
    """The config with every model default filled in (what a run should record)."""
    return config if config.cfg is not None else replace(config, cfg=default_guidance(pipe))


def model_family(pipe) -> str:
    """'minicanvas', 'sd' (1.x/2.x) or 'sdxl'."""
    if isinstance(pipe, MiniCanvasPipeline):
        return "minicanvas"
    if getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl"
    return "sd"


def load_pipeline(name_or_path: str | Path = MINICANVAS, dtype: torch.dtype | str = torch.float32, device: torch.device | str | None = None):
    """Load minicanvas, a local diffusers SD 1.x/2.x/XL folder, or a hub id, on `device` (None: auto) in `dtype`; DDIM scheduler."""
    from .devices import resolve_device, resolve_dtype

    device, dtype = resolve_device(device or "auto"), resolve_dtype(dtype)
    name = str(name_or_path)
    if name == MINICANVAS:
        from .minicanvas.model import PIPELINE_DIR

        if not (PIPELINE_DIR / "model_index.json").exists():
            raise UserError(f"the shipped minicanvas model is missing at {PIPELINE_DIR}; run scripts/train_minicanvas.py")
        pipe = MiniCanvasPipeline.from_pretrained(PIPELINE_DIR, dtype=dtype)
    else:
        path = Path(name).expanduser()
        looks_local = path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1
        if looks_local:
            index = path / "model_index.json"
            if not index.exists():
                raise UserError(f"model folder {name!r} not found or has no model_index.json; give a diffusers pipeline folder, a hub id, or 'minicanvas'")
            cls_name = read_json(index, "model index").get("_class_name")
            cls = MiniCanvasPipeline if cls_name == "MiniCanvasPipeline" else DiffusionPipeline
            try:
                pipe = cls.from_pretrained(path, dtype=dtype)
            except Exception as err:  # a foreign class, missing or truncated weights: one line naming the folder
                first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                raise UserError(f"could not load model folder {name!r} as a diffusers pipeline ({type(err).__name__}: {first[:200]})") from None
        else:
            try:
                pipe = DiffusionPipeline.from_pretrained(name, dtype=dtype)
            except Exception as err:  # offline, unknown id, gated repo: one clear message
                raise UserError(f"could not load model {name!r}: not a local folder and not loadable from the hub ({type(err).__name__}); pass a local diffusers folder or 'minicanvas'") from None
    if model_family(pipe) != "minicanvas":
        if not hasattr(pipe, "unet") or not hasattr(pipe, "vae"):
            raise UserError(f"model {name!r} is a {type(pipe).__name__}, not a Stable Diffusion 1.x/2.x/XL pipeline")
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.to(device)
    if model_family(pipe) == "minicanvas":  # faster CPU convolutions (mkldnn); SD keeps diffusers' layout, whose rounding it matches
        pipe.unet.to(memory_format=torch.channels_last)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def default_size(pipe) -> tuple[int, int]:
    """The model's native image size in pixels (height, width)."""
    unet_size = pipe.unet.config.sample_size
    scale = 1 if model_family(pipe) == "minicanvas" else pipe.vae_scale_factor
    return unet_size * scale, unet_size * scale


def check_prompts(pipe, prompts: Sequence[str]) -> None:
    """Refuse an empty prompt list, and (minicanvas) words outside its language."""
    if len(prompts) == 0:
        raise UserError("the prompt list is empty; give at least one prompt")
    if model_family(pipe) == "minicanvas":
        from .minicanvas.model import FILLER_WORDS
        from .minicanvas.world import OBJECTS, STYLE_NAMES

        known = set(pipe.tokenizer.get_vocab())
        for p in prompts:
            for word in p.split():
                if word not in known:
                    raise UserError(
                        f"unknown word {word!r} in prompt {p!r}; minicanvas knows the styles {', '.join(STYLE_NAMES)}, "
                        f"the objects {', '.join(OBJECTS)} and the words {', '.join(FILLER_WORDS)}"
                    )


def _unet_conditions(pipe, prompts: list[str], height: int, width: int) -> dict:
    """Keyword arguments of the UNet for the CFG batch [uncond; cond] of these prompts."""
    n = len(prompts)
    family = model_family(pipe)
    device = pipe.unet.device
    if family == "minicanvas":
        ids = pipe.tokenizer([""] * n + list(prompts), padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
        return {"encoder_hidden_states": pipe.text_encoder(ids.to(device)).last_hidden_state}
    # negative_prompt=None is the pipelines' own default: "" for SD, zero embeddings for SDXL with force_zeros_for_empty_prompt
    if family == "sd":
        cond, uncond = pipe.encode_prompt(list(prompts), device, 1, True, negative_prompt=None)
        return {"encoder_hidden_states": torch.cat([uncond, cond])}
    cond, uncond, pooled, uncond_pooled = pipe.encode_prompt(
        prompt=list(prompts), device=device, num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt=None
    )
    # SDXL's micro-conditioning at the pipeline's defaults: original = target size = (height, width), no crop, the same for
    # the unconditional half; the pipeline's own helper also checks the UNet's embedding width against text_encoder_2
    time_ids = pipe._get_add_time_ids((height, width), (0, 0), (height, width), dtype=cond.dtype,
                                      text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    return {
        "encoder_hidden_states": torch.cat([uncond, cond]),
        "added_cond_kwargs": {"text_embeds": torch.cat([uncond_pooled, pooled]), "time_ids": time_ids.to(device).repeat(2 * n, 1)},
    }


def half_conditions(cond: dict, half: int) -> dict:
    """One half (0: unconditional, 1: conditional) of the UNet's keyword arguments for a CFG batch."""
    def pick(v):
        if isinstance(v, dict):
            return {k: pick(x) for k, x in v.items()}
        return v.chunk(2)[half]
    return {k: pick(v) for k, v in cond.items()}


def prompt_conditions(pipe, prompts: Sequence[str], height: int | None = None, width: int | None = None) -> dict:
    """The UNet's keyword arguments for these prompts alone (no unconditional half), at the model's native size by default."""
    check_prompts(pipe, list(prompts))
    dh, dw = default_size(pipe)
    return half_conditions(_unet_conditions(pipe, list(prompts), height or dh, width or dw), 1)


def initial_latents(pipe, seeds: Sequence[int], height: int, width: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Starting noise in `dtype` (None: the UNet's), one generator per seed, so an image does not depend on its batch."""
    family = model_family(pipe)
    down = 1 if family == "minicanvas" else pipe.vae_scale_factor
    shape = (pipe.unet.config.in_channels, height // down, width // down)
    # drawn on the CPU in the working dtype, as diffusers' randn_tensor does with a CPU generator: the same noise on any device
    dtype = dtype or pipe.unet.dtype
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s)), dtype=dtype) for s in seeds]
    return torch.stack(noise).to(pipe.unet.device)


def _guide(eps: torch.Tensor, scale: float, cond_only: bool) -> torch.Tensor:
    """The guided noise prediction from the UNet's output on [uncond; cond]."""
    eps_uncond, eps_cond = eps.chunk(2)
    if cond_only:
        return eps_cond
    return eps_uncond + scale * (eps_cond - eps_uncond)


def _vae_input(vae, latents: torch.Tensor, family: str) -> torch.Tensor:
    """Final latents to what the pipeline hands its VAE: SDXL's also undoes per-channel statistics if its VAE config has them."""
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if family != "sdxl" or mean is None or std is None:  # the SD 1.x/2.x pipeline only unscales
        return latents / vae.config.scaling_factor
    # built in float32 and then cast, as the pipeline does (a direct float16 tensor can round differently)
    mean, std = (torch.tensor(v).view(1, -1, 1, 1).to(latents.device, latents.dtype) for v in (mean, std))
    return latents * std / vae.config.scaling_factor + mean


def _decode(pipe, latents: torch.Tensor) -> torch.Tensor:
    """Latents to images in [0, 1] (float, on the latents' device), as the pipeline's own call decodes them."""
    family = model_family(pipe)
    if family == "minicanvas":
        return (latents.float().clamp(-1, 1) + 1) / 2
    vae = pipe.vae
    # only the SDXL pipeline upcasts a float16 VAE that asks for it (SDXL's overflows); SD 1.x/2.x decode in the model's dtype
    upcast = family == "sdxl" and vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if upcast:
        vae.to(torch.float32)
    try:
        images = vae.decode(_vae_input(vae, latents.to(vae.dtype), family)).sample
    finally:
        if upcast:
            vae.to(torch.float16)
    # denormalized in the decoded dtype before the cast to float, as diffusers' image processor does
    return (images * 0.5 + 0.5).clamp(0, 1).float()


StepCallback = Callable[[int, int], None]


def sample(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    config: SamplerConfig = SamplerConfig(),
    on_step: StepCallback | None = None,
    on_batch: Callable[[int], None] | None = None,
    on_latents: Callable[[int, int, torch.Tensor], None] | None = None,
    decode: bool = True,
    grad: bool = False,
) -> torch.Tensor:
    """Generate one image per (prompt, seed) pair with DDIM and CFG: N x 3 x H x W in [0, 1].

    `on_batch(start)` is called before each batch with the index of its first pair;
    `on_step(step_index, timestep)` before each UNet call; `on_latents(step_index, timestep,
    x_t)` with the batch's latents before each step (unlearning methods collect trajectories
    with it). `decode=False` returns the final latents (on the model's device) instead of images.
    `grad=True` keeps the autograd graph through every step, so that a judge's verdict can be
    attributed to hooked activations; the images then stay on the model's device.
    """
    prompts = list(prompts)
    seeds = [int(s) for s in seeds]
    if len(prompts) != len(seeds):
        raise UserError(f"{len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt")
    check_prompts(pipe, prompts)
    config = resolve_sampler(pipe, config)
    if config.steps < 1:
        raise UserError(f"steps must be >= 1, got {config.steps}")
    if not np.isfinite(config.cfg):  # NaN guidance would write NaN images
        raise UserError(f"the guidance scale must be a finite number, got {config.cfg}")
    dh, dw = default_size(pipe)
    height, width = config.height or dh, config.width or dw
    # diffusers pipelines turn guidance off at a scale <= 1 and use the conditional prediction alone; the UNet still
    # runs on [uncond; cond] so hooks see both halves. minicanvas keeps the plain formula at every scale.
    cond_only = config.cfg <= 1 and model_family(pipe) != "minicanvas"
    device = pipe.unet.device
    out = []
    with torch.set_grad_enabled(grad):
        for start in range(0, len(prompts), config.batch_size):
            if on_batch is not None:
                on_batch(start)
            batch_prompts = prompts[start : start + config.batch_size]
            cond = _unet_conditions(pipe, batch_prompts, height, width)
            scheduler = copy.deepcopy(pipe.scheduler)
            scheduler.set_timesteps(config.steps, device=device)
            # noise in the text embeddings' dtype, which is what the pipelines pass to randn_tensor
            noise = initial_latents(pipe, seeds[start : start + config.batch_size], height, width, cond["encoder_hidden_states"].dtype)
            latents = noise * scheduler.init_noise_sigma
            for i, t in enumerate(scheduler.timesteps):
                if on_latents is not None:
                    on_latents(i, int(t), latents)
                if on_step is not None:
                    on_step(i, int(t))
                model_in = scheduler.scale_model_input(torch.cat([latents, latents]), t)
                eps = _guide(pipe.unet(model_in, t, **cond).sample, config.cfg, cond_only)
                latents = scheduler.step(eps, t, latents).prev_sample
            images = _decode(pipe, latents) if decode else latents
            out.append(images.cpu() if decode and not grad else images)  # images to the CPU, unless a graph goes on
    return torch.cat(out)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """N x 3 x H x W floats in [0, 1] to N x H x W x 3 uint8."""
    return (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
