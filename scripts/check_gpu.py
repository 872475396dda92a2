"""The whole chain on a device: cache -> train -> score -> generate --ablate, with throughputs.

Builds a tiny random-weight Stable Diffusion pipeline (tests/tiny_models.py; or takes --model
FOLDER), caches a labelled prompt file (examples/sd_prompts.csv) on --device in --dtype, trains an
SAE there, scores it, and generates with a concept ablated through the CLI. Prints plain
generation, caching and SAE-training throughput measured in this one run, and checks that the
ablated images are finite and differ from the plain ones.

    python scripts/check_gpu.py --device cuda [--dtype float16] [--model FOLDER]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from saeuron.cache import CacheConfig, cache_activations, open_store  # noqa: E402
from saeuron.concept_set import ConceptSet  # noqa: E402
from saeuron.concepts import score_cache  # noqa: E402
from saeuron.pipelines import SamplerConfig, load_pipeline, resolve_sampler, sample  # noqa: E402
from saeuron.sae import load_sae  # noqa: E402
from saeuron.train import TrainConfig, train  # noqa: E402


def quiet_libraries() -> None:
    """The tiny pipeline's 16-token tokenizer truncates the example prompts: keep the libraries' notices out of the table."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    diffusers_logging.set_verbosity_error()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--model", help="a diffusers SD folder (default: a tiny random SD 1.x pipeline built here)")
    ap.add_argument("--prompts", default=str(ROOT / "examples" / "sd_prompts.csv"))
    ap.add_argument("--seeds", type=int, default=4, help="seeds per prompt (default 4)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=2_000_000, help="SAE training tokens")
    ap.add_argument("--out", help="work folder (default: a temporary one)")
    args = ap.parse_args()

    quiet_libraries()
    work = Path(args.out or tempfile.mkdtemp(prefix="saeuron_check_"))
    if args.model:
        model = args.model
    else:
        from tiny_models import tiny_sd_pipeline

        model = str(tiny_sd_pipeline(work / "tiny_sd"))
    pipe = load_pipeline(model, args.dtype, args.device)
    device = pipe.unet.device
    prompts = ConceptSet.from_file(args.prompts)
    seeds = list(range(args.seeds))
    n_images = len(prompts.rows) * len(seeds)
    sampler = SamplerConfig(steps=args.steps, batch_size=64)
    print(f"device {device}, dtype {pipe.unet.dtype}, model {model}, {n_images} images x {args.steps} steps")

    sample(pipe, prompts.prompts[:2], [0, 1], sampler)  # warm-up (kernels, allocator)
    sync(device)
    t0 = time.perf_counter()
    plain = sample(pipe, [p for p in prompts.prompts for _ in seeds], seeds * len(prompts.rows), sampler)
    sync(device)
    t_plain = time.perf_counter() - t0
    if not args.model:  # the first image as diffusers' own pipeline call draws it, on the same device in the same dtype
        from tiny_models import diffusers_image, diffusers_pipeline

        reference = diffusers_pipeline(model, pipe.unet.dtype).to(device)
        gap = (plain[0] - diffusers_image(reference, prompts.prompts[0], seeds[0], resolve_sampler(pipe, sampler))).abs()
        print(f"diffusers parity on {device} {args.dtype}: max |ours - pipeline call| {gap.max():.2e}")
        del reference
    if device.type != "cpu":  # the same images on the CPU in float32
        cpu_pipe = load_pipeline(model, "float32", "cpu")
        n = min(8, len(plain))
        ref = sample(cpu_pipe, [p for p in prompts.prompts for _ in seeds][:n], (seeds * len(prompts.rows))[:n], sampler)
        gap = (plain[:n] - ref).abs()
        print(f"{device} {args.dtype} vs cpu float32 on {n} images: max |diff| {gap.max():.2e}, mean {gap.mean():.2e}")
        del cpu_pipe

    hookpoint = "up_blocks.2.attentions.1" if not args.model else "up_blocks.1.attentions.1"
    store = work / "cache.h5"
    store.unlink(missing_ok=True)
    t0 = time.perf_counter()
    cache_activations(pipe, prompts, store, CacheConfig(model=model, hookpoints=(hookpoint,), prompts=prompts.name, seeds=tuple(seeds),
                                                        steps=args.steps, batch_size=64), progress=False)
    sync(device)
    t_cache = time.perf_counter() - t0
    rows = open_store(store).rows[hookpoint]

    sae_dir = work / "sae"
    if sae_dir.exists():
        import shutil

        shutil.rmtree(sae_dir)
    metrics = train(TrainConfig(out=str(sae_dir), hookpoint=hookpoint, cache=str(store), tokens=args.tokens, batch_size=4096,
                                expansion=8, k=8, lr=4e-3, n_checkpoints=0, defaults="saeuron", device=str(device), dtype=args.dtype))
    sae = load_sae(sae_dir, hookpoint=hookpoint, device=device, dtype=pipe.unet.dtype)
    t0 = time.perf_counter()
    scores = score_cache(store, hookpoint, sae)
    t_score = time.perf_counter() - t0
    scores.save(sae_dir / "concepts.h5", {"cache": str(store), "hookpoint": hookpoint})

    out = work / "ablated"
    cmd = [sys.executable, "-m", "saeuron.cli", "generate", "--model", model, "--prompt", prompts.prompts[0], "--seeds", "0",
           "--steps", str(args.steps), "--device", str(device), "--dtype", args.dtype, "--sae", str(sae_dir),
           "--ablate", scores.concepts[0], "--percentile", "90", "--multiplier", "-5", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**__import__("os").environ, "TRANSFORMERS_VERBOSITY": "error"})
    if done.returncode != 0:
        print(done.stderr[-3000:])
        return 1
    index = json.loads((out / "index.json").read_text())
    import numpy as np
    from PIL import Image

    ablated = np.asarray(Image.open(out / index[0]["file"]), dtype=np.float32) / 255
    base = plain[0].permute(1, 2, 0).numpy()
    change = float(np.abs(ablated - base).mean())
    print(f"generate --ablate {scores.concepts[0]} via the CLI on {device}: finite {bool(np.isfinite(ablated).all())}, "
          f"mean |ablated - plain| {change:.4f}")
    print()
    print("| stage | throughput | wall |")
    print("|---|---|---|")
    print(f"| plain generation | {n_images / t_plain:.1f} images/s | {t_plain:.2f} s |")
    print(f"| caching (generation + hooks + HDF5) | {n_images / t_cache:.1f} images/s, {rows / t_cache:,.0f} rows/s | {t_cache:.2f} s "
          f"({t_cache / t_plain:.2f}x plain) |")
    print(f"| SAE training (sae-lens) | {metrics['tokens_per_s']:,.0f} tokens/s | {metrics['wall_time_s']:.1f} s, "
          f"val FVU {metrics['val_fvu']:.3f} |")
    print(f"| scoring | {rows / t_score:,.0f} rows/s | {t_score:.2f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
