"""UnGuide (Polowczyk et al., arXiv 2508.05755): a rank-1 LoRA on the cross-attention keys and values, trained towards
negative guidance from a reference prompt,

    L = || e_LoRA(x_t, c_f) - [e(x_t, c_ref) - eta (e(x_t, c_f) - e(x_t, c_ref))] ||^2,

and UnGuidance at inference. Per prompt, a stability score s(c) is the mean over repeats of || e_LoRA(z, c) - e(z, c) ||,
with z an early latent of the base model's own trajectory. A prompt that scores above the empty prompt is taken to hold
the concept and gets w = w1 (the paper's -1; 0 here, see `w_flagged`); every other prompt gets w = w2 (2). Each step
then predicts eps = w CFG_base(c) + (1 - w) CFG_LoRA(c). The scores are taken at the start of each generation, on the
text conditioning it uses, so an attacker's embeddings face the gate too. e is the base model (the LoRA switched off). On minicanvas, c_ref is the
target prompt without the target: "a star" for "a star in neon style"; for an object, the next object.

Sequential unlearning composes (`unlearn --after`, as SPM): each concept's LoRA is fitted on the base model, and a chain
of UnGuide folders is applied as one UnGuidance over every LoRA at once. A prompt is flagged when any LoRA's own score
(that LoRA alone against the base) exceeds its score of the empty prompt; with one folder this is the paper's gate.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import torch

from ..errors import UserError
from .base import (FitContext, Hyper, Method, SampleHooks, index_conditions, loaded_adapter, save_adapter, train_loop, trainable_adapter,
                   training_prompts, trajectory_bank, unet_out)

ADAPTER = "unguide"


def kv_layers(unet) -> list[str]:
    """The cross-attention key and value projections (UnGuide's LoRA targets, `attn2.to_k` / `attn2.to_v`)."""
    return [n for n, m in unet.named_modules() if n.endswith(("attn2.to_k", "attn2.to_v")) and isinstance(m, torch.nn.Linear)]


class _Reached(Exception):
    """Stops the sampler once the stability step's latents are kept."""


class UnGuide(Method):
    name = "unguide"
    summary = "UnGuide (rank-1 LoRA on cross-attention k, v; UnGuidance mixes base and LoRA per prompt by a stability score)"
    sequential = "compose"  # one LoRA per concept, each fitted on the base model; one gate over all of them at inference
    defaults = {
        "iterations": Hyper(200, 200),
        "batch_size": Hyper(8, 1, "8 x_t a step instead of 1: fewer, better-averaged steps on a CPU"),
        "lr": Hyper(1e-2, 3e-5, "a UNet 10^4 times smaller than SD's; chosen on seed 100 (style:neon), benchmarks/RESULTS.md"),
        "rank": Hyper(1, 1),
        "alpha": Hyper(8.0, 8.0),
        "negative_guidance": Hyper(2.0, 2.0),
        "start_guidance": Hyper(3.0, 9.0, "minicanvas's guidance is 4 (SD's 7.5); 3 as this project's ESD port"),
        "bank_seeds": Hyper(4, None, "x_t from a bank of the base model's trajectories (the paper samples each x_t with the LoRA on)"),
        "steps": Hyper(25, 50, "minicanvas's sampler default (DDIM 25)"),
        "stability_step": Hyper(5, 10, "z after 5 of 25 steps, the paper's ~10 of 50"),
        "repeats": Hyper(4, 10, "4 trajectories per prompt for the score (the paper's 10): the score runs at every generation"),
        "w_flagged": Hyper(0.0, -1.0, "the paper's -1 (-base + 2 LoRA on flagged prompts) left neon at UA 0 on seed 100: the "
                                      "extrapolation keeps the style's background and breaks the shapes; 0 (the LoRA alone) gives UA 100"),
        "w_other": Hyper(2.0, 2.0),
    }

    def fit(self, ctx: FitContext) -> dict:
        from peft import LoraConfig

        from ..pipelines import prompt_conditions

        pipe, p = ctx.pipe, ctx.params
        unet = pipe.unet
        refs = dict(training_prompts(ctx.targets, ctx.concept_set))  # target prompt -> reference prompt
        prompts = list(refs)
        with torch.no_grad():
            bank = trajectory_bank(pipe, prompts, [ctx.seed * 1000 + i for i in range(int(p["bank_seeds"]))], int(p["steps"]),
                                   float(p["start_guidance"]))
            cond, ref = prompt_conditions(pipe, prompts), prompt_conditions(pipe, [refs[q] for q in prompts])
        gen = torch.Generator().manual_seed(ctx.seed)
        config = LoraConfig(r=int(p["rank"]), lora_alpha=float(p["alpha"]), target_modules=kv_layers(unet), init_lora_weights=True)
        eta, n = float(p["negative_guidance"]), int(p["batch_size"])

        def loss(step: int) -> torch.Tensor:
            x, t, idx = bank.draw(n, gen)
            c, r = index_conditions(cond, idx), index_conditions(ref, idx)
            with torch.no_grad():
                unet.disable_adapters()
                e_ref = unet_out(unet, x, t, r)
                target = e_ref - eta * (unet_out(unet, x, t, c) - e_ref)
                unet.enable_adapters()
            return torch.nn.functional.mse_loss(unet_out(unet, x, t, c).float(), target.float())

        with trainable_adapter(unet, config, ADAPTER, ctx.seed) as trained:
            losses = train_loop(trained, loss, int(p["iterations"]), float(p["lr"]), ctx.log)
            record = save_adapter(unet, config, ADAPTER, ctx.out)
        return {**record, "final_loss": sum(losses[-20:]) / len(losses[-20:]), "prompts": len(prompts),
                "reference_prompts": {q: refs[q] for q in prompts[:3]}}

    @contextlib.contextmanager
    def applied(self, pipe, folder: Path, record: dict, prompts: list[str], config) -> Iterator[SampleHooks]:
        unet, p = pipe.unet, record["params"]
        with loaded_adapter(unet, folder, record, ADAPTER) as name:
            # the chain's UnGuide LoRAs applied together, (adapter name, record) in order: the first folder owns the one
            # mixing hook and the gate, later ones join them
            composed = getattr(unet, "_unguide_composed", None)
            if composed is not None:
                first = composed[0][1]["params"]
                if any(int(p[k]) != int(first[k]) for k in ("steps", "stability_step", "repeats")):
                    raise UserError(f"{str(folder)!r}: UnGuide folders compose only with the same steps, stability_step and "
                                    f"repeats as the first of their chain")
                composed.append((name, record))
                try:
                    yield SampleHooks()
                finally:
                    composed.remove((name, record))
                return
            composed = unet._unguide_composed = [(name, record)]
            try:
                with _unguidance(pipe, composed, prompts, p, config) as hooks:
                    yield hooks
            finally:
                del unet._unguide_composed


@contextlib.contextmanager
def _unguidance(pipe, composed: list[tuple[str, dict]], prompts: list[str], p: dict, config) -> Iterator[SampleHooks]:
    """UnGuidance over the composed LoRAs: a hook on the UNet mixes eps = w base + (1 - w) LoRA (every LoRA on), with
    w = w_flagged where any LoRA's stability score flags the prompt, else w_other (the first folder's weights)."""
    unet = pipe.unet
    weights = torch.zeros(0)
    w = torch.full((1,), float(p["w_flagged"]))
    busy = False

    def gate() -> torch.Tensor:
        # each prompt's weight from its stability scores, on the conditioning the sampler is about to use (an
        # attacker's embeddings included), with the mixing hook passing through while the scores sample
        nonlocal busy
        busy = True
        try:
            scores = stability_scores(pipe, list(dict.fromkeys(prompts)) + [""], p, [n for n, _ in composed])
        finally:
            busy = False
        flagged = [any(s[q] > s[""] for s in scores.values()) for q in prompts]
        return torch.tensor([float(p["w_flagged"]) if f else float(p["w_other"]) for f in flagged])

    def mix(module, args, kwargs, output):
        # eps = w base + (1 - w) LoRA on the UNet's raw [uncond; cond] outputs: CFG is linear, so this is
        # w CFG_base + (1 - w) CFG_LoRA. A batch the sampler did not announce (an attack's direct call on
        # prompts that name the concept) is treated as flagged.
        nonlocal busy
        if busy:
            return None
        lora = output[0] if isinstance(output, tuple) else output.sample
        busy = True
        try:
            unet.disable_adapters()
            base = module(*args, **kwargs)
        finally:
            unet.enable_adapters()
            busy = False
        base = base[0] if isinstance(base, tuple) else base.sample
        m = w if len(w) == len(lora) else torch.full((len(lora),), float(p["w_flagged"]))
        m = m.to(lora.device, lora.dtype).view(-1, *([1] * (lora.dim() - 1)))
        mixed = m * base + (1 - m) * lora
        if isinstance(output, tuple):
            return (mixed, *output[1:])
        output.sample = mixed
        return output

    def on_batch(start: int) -> None:
        nonlocal w, weights
        if start == 0:  # a new generation: score its prompts
            weights = gate()
        batch = weights[start : start + config.batch_size]
        w = torch.cat([batch, batch])  # one weight for both halves of a prompt's CFG pair

    handle = unet.register_forward_hook(mix, with_kwargs=True)
    try:
        yield SampleHooks(on_batch=on_batch)
    finally:
        handle.remove()


@torch.no_grad()
def stability_scores(pipe, prompts: list[str], params: dict, adapters: list[str] | None = None):
    """UnGuide's stability score of each prompt: the mean over `repeats` seeds of || e_LoRA(z, c) - e_base(z, c) ||,
    z the base model's latent after `stability_step` of `steps` DDIM steps (the adapter must be loaded). With
    `adapters`, {adapter: scores} with each LoRA alone against the base, from the same z."""
    from ..pipelines import SamplerConfig, prompt_conditions, sample

    steps, k, repeats = int(params["steps"]), int(params["stability_step"]), int(params["repeats"])
    if not 0 <= k < steps or repeats < 1:
        raise UserError(f"unguide needs 0 <= stability_step < steps and repeats >= 1, got {k}, {steps} and {repeats}")
    pairs = [(q, s) for q in prompts for s in range(repeats)]
    kept = {}

    def keep(i: int, t: int, x: torch.Tensor) -> None:
        if i == k:
            kept["z"], kept["t"] = x.clone(), t
            raise _Reached

    unet = pipe.unet
    unet.disable_adapters()
    try:
        sample(pipe, [q for q, _ in pairs], [s for _, s in pairs], SamplerConfig(steps=steps, batch_size=len(pairs)), on_latents=keep, decode=False)
    except _Reached:
        pass
    finally:
        unet.enable_adapters()
    z, t = kept["z"], torch.full((len(pairs),), kept["t"], device=kept["z"].device)
    cond = prompt_conditions(pipe, [q for q, _ in pairs])
    unet.disable_adapters()
    try:
        base = unet_out(unet, z, t, cond)
    finally:
        unet.enable_adapters()

    def scores() -> dict[str, float]:
        dist = (unet_out(unet, z, t, cond) - base).flatten(1).float().norm(dim=1).view(len(prompts), repeats).mean(1).cpu()
        return {q: float(d) for q, d in zip(prompts, dist)}

    if adapters is None:
        return scores()
    active, grads = list(unet.active_adapters()), {n: q.requires_grad for n, q in unet.named_parameters()}
    out = {}
    try:
        for name in adapters:
            unet.set_adapter(name)
            out[name] = scores()
    finally:
        unet.set_adapter(active)
        for n, q in unet.named_parameters():  # peft's set_adapter marks the active adapter trainable: undo that
            q.requires_grad_(grads[n])
    return out
