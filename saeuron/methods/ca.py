"""Concept Ablation (Kumari et al., ICCV 2023, arXiv 2303.13516), model-based: the target prompt learns to predict what
the anchor prompt predicts on the anchor's own images.

    L = || e_theta(x_t, c*, t) - sg(e_theta(x_t, c_anchor, t)) ||^2,   x_t = noised anchor images

The anchor prediction comes from the same network under no_grad (no frozen copy); the anchor
images are the base model's own generations of the anchor prompts, as the paper's 1,000
generated images. Only cross-attention keys and values train.
"""

from __future__ import annotations

import torch

from ..pipelines import SamplerConfig, prompt_conditions, sample
from .base import EditedWeightsMethod, FitContext, Hyper, fine_tune, index_conditions, parameter_group, \
    training_prompts, unet_out


class CA(EditedWeightsMethod):
    name = "ca"
    summary = "Concept Ablation (model-based: target prompt -> anchor prompt on anchor images; cross-attention k, v)"
    defaults = {
        "iterations": Hyper(800, 200, "tuned on seed 100 (style:neon): 400 steps at lr 1e-4 left UA at 40; 800 at 3e-4 "
                                      "gave UA 100, IRA 100, CRA 85"),
        "batch_size": Hyper(8, 4),
        "lr": Hyper(3e-4, 8e-6, "the paper's 2e-6 x batch 4 (--scale_lr) is for SD's 860M parameters; see iterations"),
        "anchor_images": Hyper(4, 5, "images per anchor prompt (the paper: 1,000 images of 200 prompts)"),
        "steps": Hyper(25, 50, "sampler steps of the anchor images (minicanvas's default)"),
    }

    def fit(self, ctx: FitContext) -> dict:
        pipe, p = ctx.pipe, ctx.params
        unet, scheduler = pipe.unet, pipe.scheduler
        pairs = training_prompts(ctx.targets, ctx.concept_set)
        seeds = [ctx.seed * 1000 + i for i in range(int(p["anchor_images"]))]
        with torch.no_grad():
            x0 = sample(pipe, [g for _, g in pairs for _ in seeds], seeds * len(pairs),
                        SamplerConfig(steps=int(p["steps"]), batch_size=64), decode=False)
            target_cond = prompt_conditions(pipe, [t for t, _ in pairs])
            anchor_cond = prompt_conditions(pipe, [g for _, g in pairs])
        pair_of_image = torch.arange(len(pairs)).repeat_interleave(len(seeds))
        ctx.log(f"ca: {len(pairs)} target/anchor prompt pairs, {len(x0)} anchor images")
        gen = torch.Generator().manual_seed(ctx.seed)
        trained = parameter_group(unet, "xattn-kv")
        n = int(p["batch_size"])

        def loss(step: int) -> torch.Tensor:
            i = torch.randint(len(x0), (n,), generator=gen)
            t = torch.randint(scheduler.config.num_train_timesteps, (n,), generator=gen).to(x0.device)
            noise = torch.randn(x0[i].shape, generator=gen, dtype=x0.dtype).to(x0.device)
            x_t = scheduler.add_noise(x0[i], noise, t)
            pair = pair_of_image[i]
            with torch.no_grad():
                target = unet_out(unet, x_t, t, index_conditions(anchor_cond, pair))
            return torch.nn.functional.mse_loss(unet_out(unet, x_t, t, index_conditions(target_cond, pair)).float(), target.float())

        return {**fine_tune(unet, trained, loss, p, ctx.out, ctx.log), "anchor_pairs": len(pairs)}
