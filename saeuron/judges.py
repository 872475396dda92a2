"""Judges: label generated images with one value per concept kind, for UA / IRA / CRA on any model.

`MinicanvasJudge` is the shipped style/object classifier. `ClipJudge` is zero-shot CLIP from
transformers (a local folder or a hub id): each kind's values become text prompts from a template
(`an image of {value}` unless given), and each image takes, per kind, the value whose text
embedding is nearest its image embedding. A kind with a single value (`nudity:yes`) gets a second
class, NONE, whose text is `none_prompt`, so images without it can be judged as such.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .errors import UserError

NONE = ""  # the label "none of this kind's values" (a one-value kind's second class)
DEFAULT_TEMPLATE = "an image of {value}"
DEFAULT_NONE_PROMPT = "an image"
JUDGE_FORMS = "minicanvas or clip:MODEL (a local CLIP folder or a hub id)"


class Judge:
    """Labels images (N x 3 x H x W floats in [0, 1]) with one value per kind it knows."""

    name: str = "judge"
    kinds: tuple[str, ...] = ()

    def values(self, kind: str) -> tuple[str, ...]:
        """The labels it can give for a kind."""
        raise NotImplementedError

    def label(self, images: torch.Tensor) -> list[dict[str, str]]:
        """One {kind: value} per image."""
        raise NotImplementedError


class MinicanvasJudge(Judge):
    """The shipped minicanvas classifier: a style head and an object head."""

    name = "minicanvas"
    kinds = ("style", "object")

    def values(self, kind: str) -> tuple[str, ...]:
        from .minicanvas.world import OBJECTS, STYLE_NAMES

        return {"style": tuple(STYLE_NAMES), "object": tuple(OBJECTS)}[kind]

    def label(self, images: torch.Tensor) -> list[dict[str, str]]:
        from .minicanvas.classifier import classify

        return [{"style": lab.style, "object": lab.object} for lab in classify(images.float().cpu())]

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The classifier's penultimate features (for the Frechet distance)."""
        from .minicanvas.classifier import load_classifier

        return load_classifier().features(images.float().cpu())


def _check_template(kind: str, template: str) -> str:
    if "{value}" not in template:
        raise UserError(f"the judge template of kind {kind!r}, {template!r}, has no {{value}}; write e.g. 'a painting by {{value}}'")
    return template


class ClipJudge(Judge):
    """Zero-shot classification with a transformers CLIP model over the values of each kind."""

    def __init__(self, model: str, concepts: dict[str, Sequence[str]], templates: dict[str, str] | None = None,
                 none_prompt: str = DEFAULT_NONE_PROMPT, device=None, dtype=None, batch_size: int = 64):
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        concepts = {k: list(dict.fromkeys(v for v in vs if v)) for k, vs in (concepts or {}).items()}
        concepts = {k: vs for k, vs in concepts.items() if vs}
        if not concepts:
            raise UserError("the CLIP judge needs concepts to choose from; the answer set has no labelled prompts")
        templates = dict(templates or {})
        unknown = sorted(set(templates) - set(concepts))
        if unknown:
            raise UserError(f"judge templates for unknown kinds {unknown}; the answer set has the kinds {', '.join(concepts)}")
        self.name = f"clip:{model}"
        self.kinds = tuple(concepts)
        self.batch_size = int(batch_size)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        try:
            self.model = CLIPModel.from_pretrained(model).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.processor = CLIPImageProcessor.from_pretrained(model)
        except Exception as err:  # missing folder, not a CLIP model, an unreachable hub id: one line naming it
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise UserError(f"cannot load the CLIP judge {model!r} ({type(err).__name__}: {first[:160]}); give a local folder "
                            "with a transformers CLIPModel, its tokenizer and image processor, or a reachable hub id") from None
        self.model.to(self.device, dtype=dtype or torch.float32)
        self._values: dict[str, tuple[str, ...]] = {}
        self._text: dict[str, torch.Tensor] = {}
        for kind, values in concepts.items():
            template = _check_template(kind, templates.get(kind, DEFAULT_TEMPLATE))
            labels = tuple(values) + ((NONE,) if len(values) == 1 else ())
            texts = [template.format(value=v) if v != NONE else none_prompt for v in labels]
            self._values[kind] = labels
            self._text[kind] = self._embed_text(texts)

    def values(self, kind: str) -> tuple[str, ...]:
        return self._values[kind]

    @torch.no_grad()
    def _embed_text(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        out = self.model.get_text_features(**tokens)
        out = out.pooler_output if not isinstance(out, torch.Tensor) else out
        return F.normalize(out.float(), dim=-1)

    def _preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """The image processor's resize, center crop and normalisation, in torch on the judge's device."""
        p = self.processor
        size = p.size.get("shortest_edge") or min(p.size.get("height", 224), p.size.get("width", 224))
        crop_h, crop_w = (p.crop_size["height"], p.crop_size["width"]) if p.do_center_crop else (size, size)
        x = images.to(self.device, torch.float32)
        h, w = x.shape[-2:]
        scale = size / min(h, w)
        new = (max(crop_h, round(h * scale)), max(crop_w, round(w * scale)))
        if p.do_resize and (h, w) != new:
            x = F.interpolate(x, size=new, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (x.shape[-2] - crop_h) // 2, (x.shape[-1] - crop_w) // 2
        x = x[..., top:top + crop_h, left:left + crop_w]
        mean = torch.tensor(p.image_mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(p.image_std, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.model.dtype)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm CLIP image embeddings (for labels and the Frechet distance)."""
        out = []
        for start in range(0, len(images), self.batch_size):
            emb = self.model.get_image_features(pixel_values=self._preprocess(images[start:start + self.batch_size]))
            emb = emb.pooler_output if not isinstance(emb, torch.Tensor) else emb
            out.append(F.normalize(emb.float(), dim=-1))
        return torch.cat(out) if out else torch.zeros(0, 1)

    def label(self, images: torch.Tensor) -> list[dict[str, str]]:
        feats = self.features(images)
        best = {kind: (feats @ text.T).argmax(-1).tolist() for kind, text in self._text.items()}
        return [{kind: self._values[kind][best[kind][i]] for kind in self.kinds} for i in range(len(feats))]


def parse_templates(items: Sequence[str]) -> dict[str, str]:
    """['artist=a painting by {value}', ...] -> {'artist': 'a painting by {value}'}."""
    out = {}
    for item in items:
        kind, sep, template = str(item).partition("=")
        if not sep or not kind.strip():
            raise UserError(f"bad judge template {item!r}; write KIND=TEMPLATE, e.g. 'artist=a painting by {{value}}'")
        out[kind.strip()] = _check_template(kind.strip(), template.strip())
    return out


def load_judge(spec: str, concepts: dict[str, Sequence[str]] | None = None, templates: dict[str, str] | None = None,
               device=None, dtype=None) -> Judge:
    """'minicanvas' or 'clip:MODEL' (zero-shot over `concepts`: {kind: values})."""
    spec = str(spec).strip()
    if spec == "minicanvas":
        if templates:
            raise UserError("--judge-template is for a CLIP judge; the minicanvas classifier has no prompts")
        return MinicanvasJudge()
    if spec.startswith("clip:") and spec[len("clip:"):].strip():
        return ClipJudge(spec[len("clip:"):].strip(), concepts or {}, templates, device=device, dtype=dtype)
    raise UserError(f"unknown judge {spec!r}; give {JUDGE_FORMS}")
