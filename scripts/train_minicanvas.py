"""Train the minicanvas text-to-image model on the CPU: seeded, with EMA, checkpoints and resume.

    python scripts/train_minicanvas.py --steps 8000            # starts or resumes
    python scripts/train_minicanvas.py --steps 12000           # continue a finished run further
    python scripts/train_minicanvas.py --steps 12000 --lr 1e-3 --high-noise-share 0.5 --object-weight 3   # the current recipe

Every `--checkpoint-every` steps the full training state goes to `--work-dir` (atomic
write) and the EMA weights are exported, in float16, to the shipped pipeline folder.
Each step's batch and noise are a function of (seed, step), so a resumed run is the
same run. Without `state.pt` (a fresh machine: the optimiser state is not committed) it
warm-starts from the shipped weights and the step recorded in their `training.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel, compute_snr
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from saeuron.minicanvas.model import PIPELINE_DIR, build_scheduler, build_text_encoder, build_tokenizer, build_unet  # noqa: E402
from saeuron.minicanvas.world import OBJECTS, STYLE_NAMES, object_prompt, render_with_mask, style_prompt  # noqa: E402
from saeuron.pipelines import MiniCanvasPipeline  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=8000, help="total optimisation steps")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument(
        "--min-snr-gamma",
        type=float,
        default=0.0,
        help="min-SNR loss weighting (0 = plain v-loss; it weights the high-noise steps, where the object's layout is decided, more)",
    )
    p.add_argument(
        "--high-noise-share",
        type=float,
        default=0.0,
        help="share of each batch whose timestep is drawn from [--high-noise-from, 999] instead of all of [0, 999]: "
        "the object word only matters at high noise (below ~t 500 the noisy image already shows the shape)",
    )
    p.add_argument("--high-noise-from", type=int, default=600)
    p.add_argument(
        "--object-weight",
        type=float,
        default=0.0,
        help="extra loss weight on the object's pixels (dilated by one pixel): per-pixel weight 1 + w x coverage, "
        "normalised per image; the object is ~20%% of the image and otherwise loses to the style's background in the loss",
    )
    p.add_argument("--images-per-pair", type=int, default=60, help="training renders per style x object")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--work-dir", type=Path, default=Path("checkpoints/minicanvas"))
    p.add_argument("--export-dir", type=Path, default=PIPELINE_DIR)
    p.add_argument(
        "--warm-start",
        type=Path,
        default=None,
        help="pipeline folder (with training.json) to start from when --work-dir has no state.pt; "
        "default: --export-dir if it holds one, else the shipped weights",
    )
    return p.parse_args()


def training_set(n_per_pair: int, work_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Renders (N x 3 x 32 x 32 in [-1, 1], float16), their (style, object) indices and object coverage (N x 32 x 32); cached on disk."""
    path = work_dir / f"data_{n_per_pair}_v2.npz"
    if path.exists():
        d = np.load(path)
        return d["images"], d["labels"], d["coverage"]
    labels = [(si, oi) for si in range(len(STYLE_NAMES)) for oi in range(len(OBJECTS)) for _ in range(n_per_pair)]
    seeds = [1_000_000 + k for _ in range(len(STYLE_NAMES) * len(OBJECTS)) for k in range(n_per_pair)]  # evaluation uses small seeds
    rendered = [render_with_mask(STYLE_NAMES[s], OBJECTS[o], seed) for (s, o), seed in zip(tqdm(labels, desc="rendering training set"), seeds)]
    images = (np.stack([img.transpose(2, 0, 1) for img, _ in rendered]) * 2 - 1).astype(np.float16)
    coverage = np.stack([cov for _, cov in rendered]).astype(np.float16)
    labels = np.array(labels, dtype=np.int64)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, images=images, labels=labels, coverage=coverage)
    os.replace(tmp, path)
    return images, labels, coverage


def caption(rng: np.random.Generator, si: int, oi: int) -> str:
    """Styled prompt 80%, plain object prompt 10%, empty prompt (for CFG) 10%."""
    r = rng.uniform()
    if r < 0.8:
        return style_prompt(OBJECTS[oi], STYLE_NAMES[si])
    if r < 0.9:
        return object_prompt(OBJECTS[oi])
    return ""


def training_timesteps(args, num_train_timesteps: int, gen: torch.Generator) -> torch.Tensor:
    """Uniform timesteps, with `--high-noise-share` of the batch redrawn from the high-noise range."""
    t = torch.randint(0, num_train_timesteps, (args.batch_size,), generator=gen)
    if args.high_noise_share > 0:
        high = torch.randint(args.high_noise_from, num_train_timesteps, (args.batch_size,), generator=gen)
        t = torch.where(torch.rand(args.batch_size, generator=gen) < args.high_noise_share, high, t)
    return t


def export(unet, text_encoder, ema_unet: EMAModel, ema_te: EMAModel, tokenizer, out_dir: Path) -> None:
    """Write the EMA weights as a float16 MiniCanvasPipeline (atomic folder swap)."""
    import copy

    u, te = copy.deepcopy(unet), copy.deepcopy(text_encoder)
    ema_unet.copy_to(u.parameters())
    ema_te.copy_to(te.parameters())
    pipe = MiniCanvasPipeline(unet=u, scheduler=build_scheduler(), text_encoder=te, tokenizer=tokenizer).to(torch.float16)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)


def warm_start_source(args) -> Path | None:
    """The exported pipeline to warm-start from: --warm-start, else --export-dir, else the shipped weights."""
    if args.warm_start is not None:
        if not (args.warm_start / "training.json").exists():
            raise SystemExit(f"--warm-start {args.warm_start}: no training.json there (not an exported minicanvas pipeline)")
        return args.warm_start
    for folder in (args.export_dir, PIPELINE_DIR):
        if (folder / "training.json").exists():
            return folder
    return None


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    tokenizer = build_tokenizer()
    unet, text_encoder = build_unet(), build_text_encoder(len(tokenizer.get_vocab()))
    scheduler = build_scheduler()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    ema_unet = EMAModel(unet.parameters(), decay=args.ema_decay, use_ema_warmup=True)
    ema_te = EMAModel(text_encoder.parameters(), decay=args.ema_decay, use_ema_warmup=True)
    state_path = args.work_dir / "state.pt"
    step = 0
    opt_start = 0  # the step at which this optimiser state began; the lr warms up from there
    if state_path.exists():
        state = torch.load(state_path, weights_only=False)
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        opt.load_state_dict(state["opt"])
        ema_unet.load_state_dict(state["ema_unet"])
        ema_te.load_state_dict(state["ema_te"])
        step = state["step"]
        opt_start = state.get("opt_start", 0)
        print(f"resuming from step {step}", flush=True)
    elif (source := warm_start_source(args)) is not None:
        # no optimiser state here (it is not committed): warm-start from exported EMA weights
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        unet.load_state_dict(UNet2DConditionModel.from_pretrained(source / "unet").float().state_dict())
        text_encoder.load_state_dict(CLIPTextModel.from_pretrained(source / "text_encoder").float().state_dict())
        ema_unet = EMAModel(unet.parameters(), decay=args.ema_decay, use_ema_warmup=True)
        ema_te = EMAModel(text_encoder.parameters(), decay=args.ema_decay, use_ema_warmup=True)
        step = opt_start = json.loads((source / "training.json").read_text())["step"]
        print(f"warm-starting from {source} at step {step} (fresh optimiser state)", flush=True)
    images, labels, coverage = training_set(args.images_per_pair, args.work_dir)
    images_t, coverage_t = torch.from_numpy(images), torch.from_numpy(coverage)
    alphas = scheduler.alphas_cumprod
    log = open(args.work_dir / "log.tsv", "a")
    bar = tqdm(total=args.steps, initial=step, desc="training minicanvas")
    t0 = time.time()
    while step < args.steps:
        rng = np.random.default_rng([args.seed, step])
        idx = rng.integers(0, len(images), args.batch_size)
        x0 = images_t[idx].float()
        prompts = [caption(rng, *labels[i]) for i in idx]
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        noise = torch.randn(x0.shape, generator=gen)
        t = training_timesteps(args, scheduler.config.num_train_timesteps, gen)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
        pred = unet(xt, t, encoder_hidden_states=text_encoder(ids).last_hidden_state).sample
        target = scheduler.get_velocity(x0, noise, t)  # v-prediction
        per_pixel = F.mse_loss(pred, target, reduction="none")
        if args.object_weight > 0:
            grown = F.max_pool2d(coverage_t[idx].float()[:, None], 3, stride=1, padding=1)
            weight = 1 + args.object_weight * grown
            per_image = (per_pixel * weight).mean(dim=(1, 2, 3)) / weight.mean(dim=(1, 2, 3))
        else:
            per_image = per_pixel.mean(dim=(1, 2, 3))
        if args.min_snr_gamma > 0:  # min-SNR-gamma weighting, in its v-prediction form
            snr = compute_snr(scheduler, t)
            per_image = per_image * torch.clamp(snr, max=args.min_snr_gamma) / (snr + 1)
        loss = per_image.mean()
        lr = args.lr * min(1.0, (step + 1 - opt_start) / args.warmup)  # a fresh Adam state takes full-size steps
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_unet.step(unet.parameters())
        ema_te.step(text_encoder.parameters())
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        log.write(f"{step}\t{loss.item():.5f}\t{time.time() - t0:.1f}\n")
        if step % args.checkpoint_every == 0 or step == args.steps:
            state = {
                "unet": unet.state_dict(),
                "text_encoder": text_encoder.state_dict(),
                "opt": opt.state_dict(),
                "ema_unet": ema_unet.state_dict(),
                "ema_te": ema_te.state_dict(),
                "step": step,
                "opt_start": opt_start,
                "args": vars(args),
            }
            torch.save(state, state_path.with_suffix(".tmp"))
            os.replace(state_path.with_suffix(".tmp"), state_path)
            export(unet, text_encoder, ema_unet, ema_te, tokenizer, args.export_dir)
            (args.export_dir / "training.json").write_text(json.dumps({"step": step, **{k: str(v) for k, v in vars(args).items()}}, indent=1))
            log.flush()
    bar.close()


if __name__ == "__main__":
    main()
