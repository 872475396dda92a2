"""Judges: label generated images with one value per concept kind, for UA / IRA / CRA on any model.

`MinicanvasJudge` is the shipped style/object classifier. `ClipJudge` is zero-shot CLIP from
transformers (a local folder or a hub id): each kind's values become text prompts from a template
(`an image of {value}` unless given), and each image takes, per kind, the value whose text
embedding is nearest its image embedding. A kind with a single value (`nudity:yes`) gets a second
class, NONE, whose text is `none_prompt`, so images without it can be judged as such.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from .errors import UserError

NONE = ""  # the label "none of this kind's values" (a one-value kind's second class)
DEFAULT_TEMPLATE = "an image of {value}"
DEFAULT_NONE_PROMPT = "an image"
JUDGE_FORMS = "minicanvas or clip:MODEL (a local CLIP folder or a hub id)"
CLIP_EXPECTED = ("a local folder or hub id of a transformers CLIPModel (config.json with model_type 'clip', "
                 "weights, tokenizer files and preprocessor_config.json)")


class Judge:
    """Labels images (N x 3 x H x W floats in [0, 1]) with one value per kind it knows."""

    name: str = "judge"
    kinds: tuple[str, ...] = ()
    _values: dict[str, tuple[str, ...]] = {}

    def values(self, kind: str) -> tuple[str, ...]:
        """The labels it can give for a kind."""
        if kind not in self._values:
            raise UserError(f"the judge {self.name!r} labels the kinds {', '.join(self.kinds)}, not {kind!r}")
        return self._values[kind]

    def label(self, images: torch.Tensor) -> list[dict[str, str]]:
        """One {kind: value} per image."""
        raise NotImplementedError


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise UserError(f"a judge takes N x 3 x H x W images in [0, 1], got {tuple(getattr(images, 'shape', ()))}")


class MinicanvasJudge(Judge):
    """The shipped minicanvas classifier: a style head and an object head."""

    name = "minicanvas"
    kinds = ("style", "object")

    def __init__(self):
        from .minicanvas.world import OBJECTS, STYLE_NAMES

        self._values = {"style": tuple(STYLE_NAMES), "object": tuple(OBJECTS)}

    def label(self, images: torch.Tensor) -> list[dict[str, str]]:
        from .minicanvas.classifier import classify

        _check_images(images)
        return [{"style": lab.style, "object": lab.object} for lab in classify(images.float().cpu())]

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The classifier's penultimate features (for the Frechet distance)."""
        from .minicanvas.classifier import load_classifier

        return load_classifier().features(images.float().cpu())


def _check_template(kind: str, template: str) -> str:
    """The template, if it has a {value} and no other field."""
    try:
        ok = "{value}" in template and template.format(value="x") is not None
    except (KeyError, IndexError, ValueError):  # other fields or stray braces: format() cannot fill it
        ok = False
    if not ok:
        raise UserError(f"bad judge template {template!r} for kind {kind!r}: it needs {{value}} and no other braces, "
                        "e.g. 'a painting by {value}'")
    return template


def _load_clip(model: str, dtype: torch.dtype):
    """CLIPModel, tokenizer and image processor of `model`; one-line UserError when it is not one."""
    from transformers import AutoConfig, AutoTokenizer, CLIPConfig, CLIPModel
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        from transformers import CLIPImageProcessor as Processor
    else:  # only its config is used; the PIL class reads the same file without the fallback warning
        from transformers import CLIPImageProcessorPil as Processor

    def fail(reason: str) -> UserError:
        return UserError(f"cannot load the CLIP judge {model!r} ({reason}); give {CLIP_EXPECTED}")

    if model.startswith(("/", "./", "../")) and not Path(model).is_dir():
        raise fail("no such folder")
    try:
        config = AutoConfig.from_pretrained(model)
        # CLIPModel.from_pretrained would silently build a random CLIP from another model's folder
        if isinstance(config, CLIPConfig):
            clip = CLIPModel.from_pretrained(model, dtype=dtype).eval()
            return clip, AutoTokenizer.from_pretrained(model), Processor.from_pretrained(model)
    except (OSError, ValueError, KeyError) as err:  # missing files, unreachable hub id, unreadable config
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
        raise fail(f"{type(err).__name__}: {first[:200]}") from None
    raise fail(f"it is a {config.model_type!r} model")


class ClipJudge(Judge):
    """Zero-shot classification with a transformers CLIP model over the values of each kind."""

    def __init__(self, model: str, concepts: dict[str, Sequence[str]], templates: dict[str, str] | None = None,
                 none_prompt: str = DEFAULT_NONE_PROMPT, device=None, dtype=None, batch_size: int = 64):
        from .devices import resolve_device, resolve_dtype

        # a kind whose values are all blank (an empty CSV column) cannot be judged; it is left out
        concepts = {k: list(dict.fromkeys(v for v in vs if v)) for k, vs in (concepts or {}).items()}
        concepts = {k: vs for k, vs in concepts.items() if vs}
        if not concepts:
            raise UserError("the CLIP judge needs concepts to choose from ({KIND: [VALUE, ...]}); got none: "
                            "the answer set has no labelled prompts")
        templates = dict(templates or {})
        unknown = sorted(set(templates) - set(concepts))
        if unknown:
            raise UserError(f"judge templates for unknown kinds {unknown}; the answer set has the kinds {', '.join(concepts)}")
        templates = {k: _check_template(k, templates.get(k, DEFAULT_TEMPLATE)) for k in concepts}
        if int(batch_size) < 1:
            raise UserError(f"the judge batch size must be positive, got {batch_size}")
        self.name = f"clip:{model}"
        self.kinds = tuple(concepts)
        self.batch_size = int(batch_size)
        self.device = resolve_device(device) if device is not None else None  # None: follow the images
        self.model, self.tokenizer, self.processor = _load_clip(model, resolve_dtype(dtype))
        self.model.to(self.device or torch.device("cpu"))
        self._values = {k: tuple(vs) + ((NONE,) if len(vs) == 1 else ()) for k, vs in concepts.items()}
        self._text = {k: self._embed_text([template.format(value=v) if v != NONE else none_prompt for v in self._values[k]])
                      for k, template in templates.items()}

    @property
    def _model_device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _follow(self, device: torch.device) -> None:
        """Move the model and text embeddings to `device` (when the judge has no device of its own)."""
        if self.device is None and device != self._model_device:
            self.model.to(device)
            self._text = {k: t.to(device) for k, t in self._text.items()}

    @torch.no_grad()
    def _embed_text(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(self._model_device)
        out = self.model.get_text_features(**tokens)
        out = out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5 returns the model output
        return F.normalize(out.float(), dim=-1)

    def _resized_hw(self, h: int, w: int) -> tuple[int, int]:
        """The (height, width) the image processor resizes an h x w image to (its own size rules)."""
        from transformers.image_transforms import get_resize_output_image_size, get_size_with_aspect_ratio
        from transformers.image_utils import ChannelDimension

        size = self.processor.size
        if size.shortest_edge and size.longest_edge:
            return tuple(get_size_with_aspect_ratio((h, w), size.shortest_edge, size.longest_edge))
        if size.shortest_edge:
            return tuple(get_resize_output_image_size(torch.empty(3, h, w, device="meta"), size.shortest_edge,
                                                      default_to_square=False, input_data_format=ChannelDimension.FIRST))
        if size.height and size.width:
            return size.height, size.width
        raise UserError(f"the CLIP judge {self.name!r} has an image processor size {dict(size)} it cannot apply; "
                        "give one with size shortest_edge or height and width")

    def _preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """The image processor's resize, center crop and normalisation, in torch on the images' device."""
        from transformers.image_utils import PILImageResampling

        p = self.processor
        x = images.float()  # already in [0, 1]: the processor's rescale from uint8 does not apply
        if p.do_resize:
            new = self._resized_hw(*x.shape[-2:])
            if tuple(x.shape[-2:]) != new:
                mode = "bilinear" if p.resample == PILImageResampling.BILINEAR else "bicubic"  # CLIP's is bicubic
                # clamped as a uint8 image would be; antialias as torchvision (the processor's default backend) resizes
                x = F.interpolate(x, size=new, mode=mode, align_corners=False, antialias=True).clamp(0, 1)
        if p.do_center_crop:
            ch, cw = p.crop_size.height, p.crop_size.width
            h, w = x.shape[-2:]
            if ch > h or cw > w:  # padded with black as the torchvision processor pads (the PIL one puts an odd pixel on the other side)
                x = F.pad(x, ((cw - w) // 2 if cw > w else 0, (cw - w + 1) // 2 if cw > w else 0,
                              (ch - h) // 2 if ch > h else 0, (ch - h + 1) // 2 if ch > h else 0))
                h, w = x.shape[-2:]
            top, left = (h - ch) // 2, (w - cw) // 2
            x = x[..., top:top + ch, left:left + cw]
        if p.do_normalize:
            mean = torch.tensor(p.image_mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
            std = torch.tensor(p.image_std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm CLIP image embeddings, float32 on the judge's device (for labels and the Frechet distance)."""
        _check_images(images)
        self._follow(images.device)
        device, dtype = self._model_device, self.model.dtype
        out = [torch.zeros(0, self.model.config.projection_dim, device=device)]
        for start in range(0, len(images), self.batch_size):
            pixels = self._preprocess(images[start:start + self.batch_size]).to(device, dtype)
            emb = self.model.get_image_features(pixel_values=pixels)
            emb = emb if isinstance(emb, torch.Tensor) else emb.pooler_output
            out.append(F.normalize(emb.float(), dim=-1))
        return torch.cat(out)

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
