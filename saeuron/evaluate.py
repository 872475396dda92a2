"""Measure generations on minicanvas with the shipped classifier: accuracies, PNG grids, reports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .pipelines import SamplerConfig, sample, to_uint8


@dataclass(frozen=True)
class AnswerSet:
    """The UnlearnCanvas answer set on minicanvas: every style x object, each with these seeds."""

    styles: tuple[str, ...]
    objects: tuple[str, ...]
    seeds: tuple[int, ...]

    def rows(self) -> list[tuple[str, str, int]]:
        """(style, object, seed) for every image, style-major."""
        return [(s, o, k) for s in self.styles for o in self.objects for k in self.seeds]

    def prompts(self) -> list[str]:
        """The prompt of every image."""
        from .minicanvas.world import style_prompt

        return [style_prompt(o, s) for s, o, _ in self.rows()]


def full_answer_set(seeds: Sequence[int]) -> AnswerSet:
    """Every style x object of the world with these seeds."""
    from .minicanvas.world import OBJECTS, STYLE_NAMES

    return AnswerSet(STYLE_NAMES, OBJECTS, tuple(int(s) for s in seeds))


def generate_answer_set(pipe, answers: AnswerSet, config: SamplerConfig, on_batch=None) -> torch.Tensor:
    """Generate the images of an answer set (N x 3 x H x W in [0, 1])."""
    rows = answers.rows()
    return sample(pipe, answers.prompts(), [k for _, _, k in rows], config, on_batch=on_batch)


def label_accuracy(images: torch.Tensor, answers: AnswerSet) -> dict:
    """Classifier accuracy (%) per head, overall and per style / per object, with every label."""
    from .minicanvas.classifier import classify

    labels = classify(images)
    rows = answers.rows()
    style_ok = np.array([lab.style == s for lab, (s, _, _) in zip(labels, rows)])
    object_ok = np.array([lab.object == o for lab, (_, o, _) in zip(labels, rows)])
    per_style = {s: 100 * float(np.mean([ok for ok, r in zip(style_ok, rows) if r[0] == s])) for s in answers.styles}
    per_object = {o: 100 * float(np.mean([ok for ok, r in zip(object_ok, rows) if r[1] == o])) for o in answers.objects}
    return {
        "style_accuracy": 100 * float(style_ok.mean()),
        "object_accuracy": 100 * float(object_ok.mean()),
        "per_style": per_style,
        "per_object": per_object,
        "labels": [vars(lab) for lab in labels],
    }


def image_grid(images: torch.Tensor, n_cols: int, scale: int = 3, pad: int = 1) -> Image.Image:
    """Tile images row-major into one PIL image, upscaled (nearest) for viewing."""
    arr = to_uint8(images)
    n, h, w, _ = arr.shape
    n_rows = -(-n // n_cols)
    canvas = np.full((n_rows * (h + pad) + pad, n_cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, img in enumerate(arr):
        r, c = divmod(i, n_cols)
        canvas[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = img
    grid = Image.fromarray(canvas)
    return grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)


def answer_set_grid(images: torch.Tensor, answers: AnswerSet, path: Path, seed_index: int = 0) -> Path:
    """Save a styles (rows) x objects (columns) grid of one seed of an answer set."""
    rows = answers.rows()
    keep = [i for i, (_, _, k) in enumerate(rows) if k == answers.seeds[seed_index]]
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images[keep], n_cols=len(answers.objects)).save(path)
    return path
