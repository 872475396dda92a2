"""How much does a minicanvas model use each word of its prompt? A fast training-progress probe.

    python scripts/probe_minicanvas.py [--model DIR] [--images 60] [--timesteps 999,900,800,700,600,500,300,100]

For fresh renders it computes the denoising (v-prediction) loss at fixed timesteps with the
right prompt, with the object word swapped for another object, with the style word swapped,
and with the empty prompt. The loss increase when a word is wrong is how much the model reads
that word. A model that draws objects has a clear wrong-object gap at high noise (t >= 600),
where the shape is decided. Sampling 400 images and classifying them (`bench_minicanvas.py`)
answers the same question in minutes instead of seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from saeuron.minicanvas.world import OBJECTS, STYLE_NAMES, render_batch, style_prompt  # noqa: E402
from saeuron.pipelines import MINICANVAS, load_pipeline  # noqa: E402


def swapped(rng: np.random.Generator, names: tuple[str, ...], name: str) -> str:
    """Another name from `names`, uniformly."""
    return names[(names.index(name) + 1 + rng.integers(len(names) - 1)) % len(names)]


@torch.no_grad()
def probe(pipe, n_images: int, timesteps: list[int], seed: int = 0) -> dict[int, dict[str, float]]:
    """Mean v-loss per timestep for the prompt variants: right, wrong object, wrong style, empty."""
    rng = np.random.default_rng(seed)
    labels = [(STYLE_NAMES[rng.integers(len(STYLE_NAMES))], OBJECTS[rng.integers(len(OBJECTS))]) for _ in range(n_images)]
    x0 = torch.from_numpy(render_batch(labels, list(range(5000, 5000 + n_images))) * 2 - 1).float()
    variants = {
        "right": [style_prompt(o, s) for s, o in labels],
        "wrong object": [style_prompt(swapped(rng, OBJECTS, o), s) for s, o in labels],
        "wrong style": [style_prompt(o, swapped(rng, STYLE_NAMES, s)) for s, o in labels],
        "empty": [""] * n_images,
    }
    tok = pipe.tokenizer
    embeddings = {
        k: pipe.text_encoder(tok(v, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids)[0]
        for k, v in variants.items()
    }
    scheduler, out = pipe.scheduler, {}
    for tv in timesteps:
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(tv))
        t = torch.full((n_images,), tv)
        a = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = scheduler.get_velocity(x0, noise, t)
        out[tv] = {k: ((pipe.unet(xt, t, encoder_hidden_states=e).sample - target) ** 2).mean().item() for k, e in embeddings.items()}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=MINICANVAS)
    p.add_argument("--images", type=int, default=60)
    p.add_argument("--timesteps", type=lambda text: [int(t) for t in text.split(",")], default=[999, 900, 800, 700, 600, 500, 300, 100])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model)
    result = probe(pipe, args.images, args.timesteps)
    print("| t | right | wrong object (gap) | wrong style (gap) | empty (gap) |\n|---|---|---|---|---|")
    for tv, r in result.items():
        gaps = [f"{r[k]:.4f} ({(r[k] - r['right']) / r['right']:+.1%})" for k in ("wrong object", "wrong style", "empty")]
        print(f"| {tv} | {r['right']:.4f} | " + " | ".join(gaps) + " |")
    print(json.dumps({"model": str(args.model), "loss": result}))


if __name__ == "__main__":
    main()
