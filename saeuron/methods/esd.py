"""ESD (Gandikota et al., ICCV 2023, arXiv 2303.07345): fine-tune the UNet so the concept's prediction follows negative guidance.

    L = || e_theta(x_t, c_f, t) - [ e*(x_t, "", t) - eta (e*(x_t, c_f, t) - e*(x_t, "", t)) ] ||^2

with e* the frozen base model. ESD-x trains the cross-attention parameters, ESD-u everything else
(but the time embedding and the output layer, as the authors' compvis code). The target is an
affine mix of model outputs, so it carries over to minicanvas's v-prediction unchanged.
"""

from __future__ import annotations

import torch

from .base import EditedWeightsMethod, FitContext, Hyper, erase_inputs, fine_tune, index_conditions, parameter_group, swapped_parameters, \
    unet_out

_X_T = ("x_t from a bank of the frozen model's trajectories (every step of `bank_seeds` samples per prompt), as the "
        "authors' current diffusers code samples with the frozen UNet; the 2023 code sampled each x_t anew")


class ESD(EditedWeightsMethod):
    group = "xattn"

    def __init__(self, name: str, group: str):
        self.name, self.group = name, group
        self.summary = f"ESD ({'cross-attention' if group == 'xattn' else 'all but cross-attention'} fine-tuning, negative guidance)"
        self.defaults = {
            "iterations": Hyper(200, 1000, "batch 8 instead of 1: 1,600 samples, cheaper than 1,000 batch-1 steps on a CPU"),
            "batch_size": Hyper(8, 1, "8 x_t a step instead of 1: fewer, better-averaged steps on a CPU"),
            "lr": Hyper(1e-4, 1e-5, "minicanvas's UNet is 10^4 times smaller; 1e-5 moved UA by less than 10 points in 200 steps"),
            "negative_guidance": Hyper(1.0, 1.0),
            "start_guidance": Hyper(3.0, 3.0),
            "bank_seeds": Hyper(4, None, _X_T),
            "steps": Hyper(25, 50, "minicanvas's sampler default (DDIM 25)"),
        }

    def fit(self, ctx: FitContext) -> dict:
        pipe, p = ctx.pipe, ctx.params
        unet = pipe.unet
        inputs = erase_inputs(ctx)
        bank, cond, empty = inputs.bank, inputs.cond, inputs.empty
        gen = torch.Generator().manual_seed(ctx.seed)
        ctx.log(f"{self.name}: {len(inputs.prompts)} prompts, {len(bank.latents)} x_t in the bank")
        trained = parameter_group(unet, self.group)
        eta, n = float(p["negative_guidance"]), int(p["batch_size"])
        originals = {k: v.detach().clone() for k, v in trained.items()}  # e*: swapped in, no second UNet in memory

        def loss(step: int) -> torch.Tensor:
            x, t, idx = bank.draw(n, gen)
            c = index_conditions(cond, idx)
            e0 = index_conditions(empty, torch.zeros(n, dtype=torch.long))
            with torch.no_grad(), swapped_parameters(unet, originals):
                target = unet_out(unet, x, t, e0)
                target = target - eta * (unet_out(unet, x, t, c) - target)
            return torch.nn.functional.mse_loss(unet_out(unet, x, t, c).float(), target.float())

        return {**fine_tune(unet, trained, loss, p, ctx.out, ctx.log, originals=originals), "prompts": len(inputs.prompts)}
