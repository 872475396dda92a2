"""SPM, Concept Semi-Permeable Membrane (Lyu et al., CVPR 2024, arXiv 2312.16145): a rank-1 adapter on every linear and
convolution layer of the UNet's transformer blocks (through peft), trained with ESD's erase term and latent anchoring,

    L = || e_SPM(x_t, c_f) - [e(x_t, "") - eta (e(x_t, c_f) - e(x_t, ""))] ||^2 + lambda_LA E_a || e_SPM(x_t, a) - e(x_t, a) ||^2,

e the base model (the adapter switched off), a random text embeddings near the concept's norm.
At inference, facilitated transport scales the adapter per prompt by
max(cosine of the flattened prompt embeddings with the concept's, share of the concept's tokens in the prompt).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import torch

from ..concept_set import Concept
from ..pipelines import prompt_conditions
from .base import (FitContext, Hyper, Method, SampleHooks, erase_inputs, index_conditions, loaded_adapter, save_adapter, train_loop,
                   trainable_adapter, unet_out)

ADAPTER = "spm"


def transformer_layers(unet) -> list[str]:
    """Every Linear and Conv2d inside the UNet's Transformer2DModel blocks (SPM's adapted layers)."""
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    names = []
    for name, module in unet.named_modules():
        if isinstance(module, Transformer2DModel):
            names += [f"{name}.{sub}" for sub, m in module.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    return names


def _anchors(concept: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """n random embeddings of the concept's shape, norms 0.8-1.2x the concept's, each kept with probability 1 - cos."""
    flat = concept.flatten().float().cpu()
    out = []
    while len(out) < n:
        a = torch.randn(flat.shape, generator=gen)
        a = a / a.norm() * flat.norm() * (0.8 + 0.4 * torch.rand((), generator=gen))
        if torch.rand((), generator=gen) < 1 - torch.nn.functional.cosine_similarity(a, flat, dim=0):
            out.append(a.view_as(concept))
    return torch.stack(out).to(concept.device, concept.dtype)


class SPM(Method):
    name = "spm"
    summary = "SPM (rank-1 adapters on the transformer blocks, latent anchoring, facilitated transport)"
    sequential = "compose"  # the paper's multi-concept use: one adapter per concept, each with its own transport
    defaults = {
        "iterations": Hyper(400, 3000, "batch 4 instead of 1 and an x_t bank: 1,600 samples, minutes on a CPU"),
        "batch_size": Hyper(4, 1, "4 x_t a step instead of 1: fewer, better-averaged steps on a CPU"),
        "lr": Hyper(3e-3, 1e-4, "tuned on seed 100 (style:neon, 400 steps): UA 50 at 1e-3, 90 at 3e-3, IRA 100 and CRA 99 at both"),
        "rank": Hyper(1, 1),
        "alpha": Hyper(1.0, 1.0),
        "negative_guidance": Hyper(1.0, 1.0),
        "la_strength": Hyper(1000.0, 1000.0),
        "anchors": Hyper(4, 4),
        "start_guidance": Hyper(3.0, 3.0),
        "bank_seeds": Hyper(4, None, "x_t from a bank of the base model's trajectories (the paper samples each x_t with the adapter on)"),
        "steps": Hyper(25, 30, "minicanvas's sampler default (DDIM 25)"),
        "transport": Hyper(1, 1, "1: facilitated transport at inference; 0: the adapter at full strength on every prompt"),
    }

    def fit(self, ctx: FitContext) -> dict:
        from peft import LoraConfig

        pipe, p = ctx.pipe, ctx.params
        unet = pipe.unet
        inputs = erase_inputs(ctx)
        bank, cond, empty = inputs.bank, inputs.cond, inputs.empty
        gen = torch.Generator().manual_seed(ctx.seed)
        config = LoraConfig(r=int(p["rank"]), lora_alpha=float(p["alpha"]), target_modules=transformer_layers(unet), init_lora_weights=True)
        eta, n, n_anchor, la = float(p["negative_guidance"]), int(p["batch_size"]), int(p["anchors"]), float(p["la_strength"])

        def loss(step: int) -> torch.Tensor:
            x, t, idx = bank.draw(n, gen)
            c = index_conditions(cond, idx)
            e0 = index_conditions(empty, torch.zeros(n, dtype=torch.long))
            j = torch.randint(n, (n_anchor,), generator=gen)
            anchor = dict(index_conditions(empty, torch.zeros(n_anchor, dtype=torch.long)))
            anchor["encoder_hidden_states"] = _anchors(c["encoder_hidden_states"][0], n_anchor, gen)
            xa, ta = x[j.to(x.device)], t[j.to(t.device)]
            with torch.no_grad():
                unet.disable_adapters()
                base_empty = unet_out(unet, x, t, e0)
                target = base_empty - eta * (unet_out(unet, x, t, c) - base_empty)
                base_anchor = unet_out(unet, xa, ta, anchor)
                unet.enable_adapters()
            erase = torch.nn.functional.mse_loss(unet_out(unet, x, t, c).float(), target.float())
            keep = torch.nn.functional.mse_loss(unet_out(unet, xa, ta, anchor).float(), base_anchor.float())
            return erase + la * keep

        with trainable_adapter(unet, config, ADAPTER, ctx.seed) as trained:
            losses = train_loop(trained, loss, int(p["iterations"]), float(p["lr"]), ctx.log)
            record = save_adapter(unet, config, ADAPTER, ctx.out)
        return {**record, "final_loss": sum(losses[-20:]) / len(losses[-20:]), "prompts": len(inputs.prompts)}

    @contextlib.contextmanager
    def applied(self, pipe, folder: Path, record: dict, prompts: list[str], config) -> Iterator[SampleHooks]:
        unet = pipe.unet
        strength = torch.ones(1)
        multipliers = transport(pipe, prompts, record["targets"]) if int(record["params"]["transport"]) else torch.ones(len(prompts))

        def scale(module, inputs, output):
            m = strength.to(output.device, output.dtype)
            return output * m.view(-1, *([1] * (output.dim() - 1))) if len(m) == len(output) else output

        def on_batch(start: int) -> None:
            nonlocal strength
            batch = multipliers[start : start + config.batch_size]
            strength = torch.cat([batch, batch])  # the adapter of a prompt acts on both halves of its CFG pair

        with loaded_adapter(unet, folder, record, ADAPTER) as name:
            handles = [m.lora_B[name].register_forward_hook(scale) for m in unet.modules() if hasattr(m, "lora_B") and name in m.lora_B]
            try:
                yield SampleHooks(on_batch=on_batch)
            finally:
                for h in handles:
                    h.remove()


@torch.no_grad()
def transport(pipe, prompts: list[str], targets: list[str]) -> torch.Tensor:
    """SPM's facilitated transport: per prompt, the max over targets of max(cosine similarity of the flattened prompt
    embeddings with the concept's, share of the concept's tokens found in the prompt)."""
    emb = prompt_conditions(pipe, prompts)["encoder_hidden_states"].flatten(1).float()
    out = torch.zeros(len(prompts))
    for t in targets:
        value = Concept.parse(t).value
        concept = prompt_conditions(pipe, [value])["encoder_hidden_states"].flatten(1).float()
        cos = torch.nn.functional.cosine_similarity(emb, concept).cpu()
        words = pipe.tokenizer(value, add_special_tokens=False).input_ids
        overlap = torch.tensor([sum(w in pipe.tokenizer(p, add_special_tokens=False).input_ids for w in words) / max(1, len(words))
                                for p in prompts])
        out = torch.maximum(out, torch.maximum(cos.clamp(0, 1), overlap))
    return out
