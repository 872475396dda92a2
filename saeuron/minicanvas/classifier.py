"""The shipped style/object classifier: a small CNN with two heads, as UnlearnCanvas uses two."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from ..errors import UserError
from .model import CLASSIFIER_PATH
from .world import OBJECTS, STYLE_NAMES


class StyleObjectClassifier(nn.Module):
    """CNN over 32x32 RGB in [0, 1] with a style head and an object head."""

    def __init__(self, width: int = 32):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
            )

        self.body = nn.Sequential(
            block(3, width), nn.MaxPool2d(2),
            block(width, 2 * width), nn.MaxPool2d(2),
            block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.style_head = nn.Linear(4 * width, len(STYLE_NAMES))
        self.object_head = nn.Linear(4 * width, len(OBJECTS))

    def features(self, images_bchw: torch.Tensor) -> torch.Tensor:
        """Penultimate features (used for Frechet distances)."""
        return self.body(images_bchw * 2 - 1)

    def forward(self, images_bchw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Style logits and object logits."""
        f = self.features(images_bchw)
        return self.style_head(f), self.object_head(f)


@dataclass(frozen=True)
class Label:
    """The classifier's verdict on one image."""

    style: str
    object: str
    style_prob: float
    object_prob: float


@lru_cache(maxsize=1)
def load_classifier() -> StyleObjectClassifier:
    """The shipped classifier, in eval mode."""
    from safetensors.torch import load_file

    if not CLASSIFIER_PATH.exists():
        raise UserError(f"the shipped classifier is missing at {CLASSIFIER_PATH}; run scripts/train_classifier.py")
    model = StyleObjectClassifier()
    model.load_state_dict(load_file(CLASSIFIER_PATH))
    return model.eval()


@torch.no_grad()
def classify(images_bchw: torch.Tensor, batch_size: int = 256) -> list[Label]:
    """Label images (N x 3 x 32 x 32 in [0, 1]) with style and object."""
    if images_bchw.ndim != 4 or tuple(images_bchw.shape[1:]) != (3, 32, 32):
        raise UserError(f"the classifier takes N x 3 x 32 x 32 images, got shape {tuple(images_bchw.shape)}")
    model = load_classifier()
    labels = []
    for start in range(0, len(images_bchw), batch_size):
        s_logits, o_logits = model(images_bchw[start : start + batch_size].float())
        sp, si = s_logits.softmax(-1).max(-1)
        op, oi = o_logits.softmax(-1).max(-1)
        labels += [
            Label(STYLE_NAMES[a], OBJECTS[b], round(float(c), 4), round(float(d), 4))
            for a, b, c, d in zip(si.tolist(), oi.tolist(), sp.tolist(), op.tolist())
        ]
    return labels
