"""Train the shipped style/object classifier on fresh minicanvas renders, with augmentation.

    python scripts/train_classifier.py

Augmentation (pixel noise, blur, colour jitter, shifts) makes it robust to the small
artefacts of generated images. Reports per-head accuracy on renders with unseen seeds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from saeuron.minicanvas.classifier import StyleObjectClassifier  # noqa: E402
from saeuron.minicanvas.model import CLASSIFIER_PATH  # noqa: E402
from saeuron.minicanvas.world import OBJECTS, STYLE_NAMES, render_batch  # noqa: E402


def dataset(n_per_pair: int, seed_base: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Renders with their style and object indices."""
    pairs = [(si, oi) for si in range(len(STYLE_NAMES)) for oi in range(len(OBJECTS))]
    labels = [(s, o) for s, o in pairs for _ in range(n_per_pair)]
    seeds = [seed_base + k for _ in pairs for k in range(n_per_pair)]
    images = render_batch([(STYLE_NAMES[s], OBJECTS[o]) for s, o in labels], seeds)
    lab = torch.tensor(labels)
    return torch.from_numpy(images), lab[:, 0], lab[:, 1]


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Noise, blur, colour jitter and small shifts."""
    n = len(x)
    shift = torch.randint(-2, 3, (2,), generator=gen).tolist()
    x = torch.roll(x, shifts=shift, dims=(2, 3))
    blur = torch.rand(n, 1, 1, 1, generator=gen) < 0.3
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :] / 16).expand(3, 1, 3, 3)
    x = torch.where(blur, F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3), x)
    x = x * (1 + 0.1 * (torch.rand(n, 3, 1, 1, generator=gen) - 0.5)) + 0.06 * (torch.rand(n, 1, 1, 1, generator=gen) - 0.5)
    x = x + torch.randn(x.shape, generator=gen) * torch.rand(n, 1, 1, 1, generator=gen) * 0.08
    return x.clamp(0, 1)


@torch.no_grad()
def accuracy(model, x, ys, yo) -> tuple[float, float]:
    """Per-head accuracy."""
    model.eval()
    s, o = model(x)
    model.train()
    return (s.argmax(-1) == ys).float().mean().item(), (o.argmax(-1) == yo).float().mean().item()


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images-per-pair", type=int, default=60)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=CLASSIFIER_PATH)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x, ys, yo = dataset(args.images_per_pair, seed_base=2_000_000)
    xv, ysv, yov = dataset(4, seed_base=3_000_000)
    model = StyleObjectClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps_per_epoch = len(x) // 128
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=args.epochs * steps_per_epoch)
    for epoch in range(args.epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}", leave=False):
            idx = perm[i * 128 : (i + 1) * 128]
            s, o = model(augment(x[idx], gen))
            loss = F.cross_entropy(s, ys[idx]) + F.cross_entropy(o, yo[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        acc_s, acc_o = accuracy(model, xv, ysv, yov)
        print(f"epoch {epoch + 1}: loss {loss.item():.4f}  held-out style acc {acc_s:.4f}  object acc {acc_o:.4f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.eval().state_dict().items()}, args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
