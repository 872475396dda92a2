"""Selective Amnesia (Heng & Soh, NeurIPS 2023, arXiv 2305.10120): forget a concept by learning a surrogate distribution
for it, while elastic weight consolidation (EWC) and generative replay protect everything else.

    L = E_{x ~ q(x | c_f)} L(x, c_f) + gamma E_{(x, c) ~ replay} L(x, c) + lambda sum_i F_i (theta_i - theta*_i)^2

L is the diffusion loss (the velocity target on minicanvas, the noise on SD), theta* the base weights, F the diagonal
Fisher of the base model: per sample, the gradient of the diffusion loss over the timesteps, squared, averaged over
samples. The replay set is the base model's own samples of every kept prompt ("generative replay"). The surrogate
q(x | c_f) is the base model's samples of the same prompt with the target replaced by the next value of its kind ("a
star in noir style" for "a star in neon style"; "a square" for "a star"), as the UnlearnCanvas port maps every style to
"Photo style". Not the prompt without the target: minicanvas's unstyled prompts draw neon on half of the seeds.

The Fisher and the replay samples depend on the base model only: they are computed once, stored beside the output
folder (`sa-base/<key>/`), and reused by every target fitted on the same model with the same settings.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .base import EditedWeightsMethod, FitContext, Hyper, diffusion_target, fine_tune, gradients, guide_row, index_conditions, \
    parameter_group, target_rows, unet_out

STORE_DIR = "sa-base"


class SelectiveAmnesia(EditedWeightsMethod):
    name = "sa"
    summary = "Selective Amnesia (surrogate forget set, generative replay, EWC with the base model's diagonal Fisher)"
    defaults = {
        "iterations": Hyper(400, 20000, "the DDPM/CIFAR-10 schedule (20k steps at batch 128 + 128) is days on a CPU; 400 steps "
                                        "at batch 8 + 8"),
        "batch_size": Hyper(8, 128, "forget and replay images per step, each (the paper's CIFAR-10 run: 128 + 128)"),
        "lr": Hyper(1e-4, 1e-4, "the CIFAR-10 DDPM config's, the paper's closest to minicanvas (SD: 1e-5)"),
        "ewc_lambda": Hyper(50.0, 50.0, "the SD config's, whose loss is a per-pixel mean as here (CIFAR-10's, a per-image "
                                        "sum: 10)"),
        "gamma": Hyper(1.0, 1.0),
        "group": Hyper("full", "full", choices=("full", "xattn", "noxattn", "xattn-kv")),
        "replay_seeds": Hyper(2, None, "base-model samples per prompt of the concept set (minicanvas: 110 prompts, 220 images); "
                                       "the paper generates ~5,000 prompts' images"),
        "fisher_timesteps": Hyper(16, 1000, "Monte-Carlo Fisher: per sample, the loss over 16 stratified timesteps instead of "
                                            "all 1,000"),
        "steps": Hyper(25, 50, "sampler steps of the replay and surrogate images (minicanvas's default)"),
        "surrogate": Hyper("next", "Photo style", "UnlearnCanvas's SA maps every style to 'An image in Photo style'; minicanvas "
                                                 "has no neutral style, so the next style's (neon -> noir) or object's images; "
                                                 "'noise': uniform noise images, the paper's CIFAR-10 surrogate",
                           choices=("next", "noise")),
    }

    def fit(self, ctx: FitContext) -> dict:
        pipe, p = ctx.pipe, ctx.params
        unet, scheduler = pipe.unet, pipe.scheduler
        store = base_store(ctx)
        index = {q: i for i, q in enumerate(store.prompts)}
        targets = {r["prompt"] for t in ctx.targets for r in target_rows(t, ctx.concept_set)}
        pairs = [(r["prompt"], guide_row(r, t, ctx.concept_set, leave_out=False)["prompt"]) for t in ctx.targets
                 for r in target_rows(t, ctx.concept_set)]
        # forget: the surrogate images, conditioned on the target prompt; replay: every kept prompt's images
        x0_all = store.latents
        if p["surrogate"] == "next":
            forget = [(j, index[q]) for q, g in pairs for j in (store.prompt_index == index[g]).nonzero().flatten().tolist()]
        else:  # the DDPM / CIFAR-10 recipe: uniform noise in [-1, 1], as many images as the replay set has per prompt
            k = int(p["replay_seeds"])
            noise = torch.rand((len(pairs) * k, *x0_all.shape[1:]), generator=torch.Generator().manual_seed(ctx.seed)) * 2 - 1
            forget = [(len(x0_all) + j, index[pairs[j // k][0]]) for j in range(len(noise))]
            x0_all = torch.cat([x0_all, noise.to(x0_all.device, x0_all.dtype)])
        replay = [j for j, i in enumerate(store.prompt_index.tolist()) if store.prompts[i] not in targets]
        if not forget or not replay:
            raise ValueError(f"sa needs surrogate and replay images; got {len(forget)} and {len(replay)}")
        forget_image = torch.tensor([j for j, _ in forget])
        forget_prompt = torch.tensor([i for _, i in forget])
        replay_image = torch.tensor(replay)
        from ..pipelines import prompt_conditions

        with torch.no_grad():
            cond = prompt_conditions(pipe, store.prompts)
        trained = parameter_group(unet, str(p["group"]))
        theta_star = {k: v.detach().clone() for k, v in trained.items()}
        fisher = {k: store.fisher[k].to(v.device, v.dtype) for k, v in trained.items()}
        ctx.log(f"sa: {len(pairs)} target prompts, {len(forget)} surrogate and {len(replay)} replay images, "
                f"{sum(v.numel() for v in trained.values())} parameters under EWC")
        gen = torch.Generator().manual_seed(ctx.seed)
        n, gamma, lam = int(p["batch_size"]), float(p["gamma"]), float(p["ewc_lambda"])

        def diffusion(images: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
            x0 = x0_all[images.to(x0_all.device)]
            t = torch.randint(scheduler.config.num_train_timesteps, (len(x0),), generator=gen).to(x0.device)
            noise = torch.randn(x0.shape, generator=gen, dtype=x0.dtype).to(x0.device)
            pred = unet_out(unet, scheduler.add_noise(x0, noise, t), t, index_conditions(cond, prompts))
            return torch.nn.functional.mse_loss(pred.float(), diffusion_target(scheduler, x0, noise, t).float())

        def loss(step: int) -> torch.Tensor:
            f = torch.randint(len(forget_image), (n,), generator=gen)
            r = replay_image[torch.randint(len(replay_image), (n,), generator=gen)]
            ewc = sum((fisher[k] * (v - theta_star[k]) ** 2).sum() for k, v in trained.items())
            return (diffusion(forget_image[f], forget_prompt[f]) + gamma * diffusion(r, store.prompt_index[r.to(store.prompt_index.device)])
                    + lam * ewc)

        record = fine_tune(unet, trained, loss, p, ctx.out, ctx.log, originals=theta_star)
        return {**record, "surrogate_pairs": {q: g for q, g in pairs[:3]}, "replay_images": len(replay),
                "surrogate_images": len(forget), "base_store": str(store.folder.resolve())}


# ---------------------------------------------------------------- the base model's Fisher and replay samples


@dataclass
class BaseStore:
    """What Selective Amnesia needs of the base model: its samples of every prompt and its diagonal Fisher."""

    folder: Path
    prompts: list[str]
    latents: torch.Tensor  # N x C x H x W, clean samples
    prompt_index: torch.Tensor  # N
    fisher: dict[str, torch.Tensor]


def store_key(pipe, prompts: list[str], params: dict, seed: int) -> str:
    """A digest of everything the store depends on: every UNet parameter (so a chained model gets its own), the prompts,
    the settings that shape it, the seed."""
    h = hashlib.sha256()
    for name, prm in sorted(pipe.unet.named_parameters()):
        h.update(name.encode())
        h.update(f"{float(prm.detach().float().norm()):.6e}".encode())
    h.update(json.dumps([prompts, {k: params[k] for k in ("replay_seeds", "fisher_timesteps", "steps")}, seed,
                         str(pipe.unet.dtype)]).encode())
    return h.hexdigest()[:16]


def base_store(ctx: FitContext) -> BaseStore:
    """The store for this base model and these settings: read from `<out>/../sa-base/<key>/`, or computed and written
    there (under a lock, so that parallel fits compute it once)."""
    from safetensors.torch import load_file, save_file

    prompts = list(dict.fromkeys([r["prompt"] for r in ctx.concept_set.rows] + [""]))
    root = ctx.out.parent / STORE_DIR
    root.mkdir(parents=True, exist_ok=True)
    key = store_key(ctx.pipe, prompts, ctx.params, ctx.seed)
    folder = root / key
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "store.json").exists():
            ctx.log(f"sa: computing the base model's replay samples and Fisher into {folder}")
            latents, prompt_index = replay_samples(ctx.pipe, prompts, ctx.params, ctx.seed)
            fisher = diagonal_fisher(ctx.pipe, prompts, latents, prompt_index, ctx.params, ctx.seed, ctx.log)
            work = folder.with_name(key + ".partial")
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            save_file({"latents": latents.cpu().contiguous(), "prompt_index": prompt_index.cpu()}, str(work / "replay.safetensors"))
            save_file({k: v.cpu().contiguous() for k, v in fisher.items()}, str(work / "fisher.safetensors"))
            (work / "store.json").write_text(json.dumps({"prompts": prompts, "seed": ctx.seed, "images": len(latents),
                                                         **{k: ctx.params[k] for k in ("replay_seeds", "fisher_timesteps", "steps")}}))
            work.rename(folder)
    device = ctx.pipe.unet.device
    replay = load_file(str(folder / "replay.safetensors"))
    fisher = load_file(str(folder / "fisher.safetensors"))
    stored = json.loads((folder / "store.json").read_text())["prompts"]
    return BaseStore(folder, stored, replay["latents"].to(device, ctx.pipe.unet.dtype), replay["prompt_index"].to(device), fisher)


@torch.no_grad()
def replay_samples(pipe, prompts: list[str], params: dict, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The base model's clean latents for every prompt x `replay_seeds` seeds, and each one's prompt index."""
    from ..pipelines import SamplerConfig, sample

    seeds = [seed * 1000 + 500 + i for i in range(int(params["replay_seeds"]))]
    pairs = [(i, s) for i in range(len(prompts)) for s in seeds]
    latents = sample(pipe, [prompts[i] for i, _ in pairs], [s for _, s in pairs], SamplerConfig(steps=int(params["steps"]), batch_size=64),
                     decode=False)
    return latents, torch.tensor([i for i, _ in pairs], device=latents.device)


def diagonal_fisher(pipe, prompts: list[str], latents: torch.Tensor, prompt_index: torch.Tensor, params: dict, seed: int,
                    log=print) -> dict[str, torch.Tensor]:
    """F_i = E_x [(d/d theta_i  mean_t L(x, t))^2] over the base model's samples, one gradient per sample, its loss
    averaged over `fisher_timesteps` stratified timesteps (a Monte-Carlo estimate of the paper's sum over all of them)."""
    from ..pipelines import prompt_conditions

    unet, scheduler = pipe.unet, pipe.scheduler
    k = int(params["fisher_timesteps"])
    total = scheduler.config.num_train_timesteps
    named = [(n, prm) for n, prm in unet.named_parameters()]
    fisher = {n: torch.zeros_like(prm, dtype=torch.float32) for n, prm in named}
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        cond = prompt_conditions(pipe, prompts)
    with gradients(unet, True):
        for j in range(len(latents)):
            x0 = latents[j : j + 1].expand(k, *latents.shape[1:])
            t = ((torch.arange(k) + torch.rand(k, generator=gen)) * total / k).long().clamp(max=total - 1).to(x0.device)
            noise = torch.randn(x0.shape, generator=gen, dtype=x0.dtype).to(x0.device)
            c = index_conditions(cond, prompt_index[j : j + 1].expand(k))
            pred = unet_out(unet, scheduler.add_noise(x0, noise, t), t, c)
            loss = torch.nn.functional.mse_loss(pred.float(), diffusion_target(scheduler, x0, noise, t).float())
            grads = torch.autograd.grad(loss, [prm for _, prm in named], allow_unused=True)
            for (n, _), g in zip(named, grads):
                if g is not None:
                    fisher[n] += g.float() ** 2 / len(latents)
            if (j + 1) % max(1, len(latents) // 5) == 0:
                log(f"  fisher: {j + 1}/{len(latents)} samples")
    return fisher
