"""The minicanvas world: procedural 32x32 images of styles x objects, and their prompts.

A *style* is an image-wide look (background pattern, palette, object colour and
outline), as in UnlearnCanvas; an *object* is a silhouette drawn with position,
scale and rotation jitter. Every render is a pure function of (style, object, seed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 32
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class Style:
    """An image-wide look: background pattern and the palette of background and object."""

    name: str
    pattern: str
    background: tuple[tuple[int, int, int], tuple[int, int, int]]
    fill: tuple[int, int, int]
    outline: tuple[int, int, int] | None


STYLES: tuple[Style, ...] = (
    Style("sunset", "gradient", ((250, 190, 90), (200, 50, 90)), (60, 20, 70), None),
    Style("ocean", "waves", ((20, 70, 160), (70, 170, 220)), (250, 250, 235), None),
    Style("forest", "dots", ((20, 90, 40), (90, 160, 60)), (240, 200, 60), (90, 40, 10)),
    Style("neon", "grid", ((10, 10, 20), (230, 30, 200)), (40, 250, 230), None),
    Style("pastel", "stripes", ((250, 210, 225), (200, 230, 250)), (150, 120, 200), None),
    Style("desert", "noise", ((225, 185, 120), (180, 130, 70)), (120, 60, 20), None),
    Style("noir", "plain", ((235, 235, 235), (235, 235, 235)), (15, 15, 15), None),
    Style("candy", "checker", ((250, 120, 170), (250, 250, 250)), (40, 170, 90), (20, 60, 30)),
    Style("sketch", "hatch", ((245, 240, 225), (150, 140, 130)), (245, 240, 225), (30, 30, 30)),
    Style("lava", "rings", ((40, 0, 0), (250, 100, 10)), (250, 230, 60), None),
)

OBJECTS: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "heart",
    "ring",
    "diamond",
    "moon",
    "arrow",
)

STYLE_NAMES: tuple[str, ...] = tuple(s.name for s in STYLES)
_STYLE_BY_NAME = {s.name: s for s in STYLES}


def style_prompt(obj: str, style: str) -> str:
    """The prompt of an object drawn in a style."""
    return f"a {obj} in {style} style"


def object_prompt(obj: str) -> str:
    """The prompt of an object in no particular style."""
    return f"a {obj}"


def all_prompts() -> list[dict]:
    """Every style x object prompt and every plain object prompt, with concept labels."""
    rows = [
        {"prompt": style_prompt(o, s), "style": s, "object": o}
        for s in STYLE_NAMES
        for o in OBJECTS
    ]
    rows += [{"prompt": object_prompt(o), "style": "", "object": o} for o in OBJECTS]
    return rows


def check_concept(kind: str, name: str) -> None:
    """Raise a clear ValueError unless `name` is a known style or object."""
    valid = {"style": STYLE_NAMES, "object": OBJECTS}
    if kind not in valid:
        raise ValueError(f"unknown concept kind {kind!r}; valid kinds: style, object")
    if name not in valid[kind]:
        raise ValueError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(valid[kind])}")


# ---------------------------------------------------------------- silhouettes


def _polygon_mask(x: np.ndarray, y: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test on coordinate grids."""
    inside = np.zeros(x.shape, dtype=bool)
    n = len(pts)
    for i in range(n):
        x1, y1 = pts[i]
        x2, y2 = pts[(i + 1) % n]
        crosses = (y1 > y) != (y2 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            xint = (x2 - x1) * (y - y1) / (y2 - y1 + 1e-12) + x1
        inside ^= crosses & (x < xint)
    return inside


def _silhouette(obj: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Boolean mask of an object in its own frame (unit size ~1, centred at 0)."""
    r = np.hypot(x, y)
    if obj == "circle":
        return r < 0.85
    if obj == "square":
        return (np.abs(x) < 0.72) & (np.abs(y) < 0.72)
    if obj == "triangle":
        return _polygon_mask(x, y, np.array([(0.0, -0.95), (0.9, 0.7), (-0.9, 0.7)]))
    if obj == "star":
        ang = np.arange(10) * math.pi / 5 - math.pi / 2
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return _polygon_mask(x, y, np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1))
    if obj == "cross":
        return ((np.abs(x) < 0.28) & (np.abs(y) < 0.9)) | ((np.abs(y) < 0.28) & (np.abs(x) < 0.9))
    if obj == "heart":
        yy = -y * 1.1 + 0.15
        xx = x * 1.1
        return (xx**2 + yy**2 - 0.6) ** 3 - xx**2 * yy**3 < 0
    if obj == "ring":
        return (r < 0.9) & (r > 0.5)
    if obj == "diamond":
        return np.abs(x) / 0.65 + np.abs(y) / 0.95 < 1.0
    if obj == "moon":
        return (r < 0.85) & (np.hypot(x - 0.42, y + 0.15) > 0.62)
    if obj == "arrow":
        head = _polygon_mask(x, y, np.array([(0.95, 0.0), (0.1, -0.7), (0.1, 0.7)]))
        shaft = (x > -0.9) & (x <= 0.15) & (np.abs(y) < 0.25)
        return head | shaft
    raise ValueError(f"unknown object {obj!r}; valid objects: {', '.join(OBJECTS)}")


# ---------------------------------------------------------------- backgrounds


def _background(style: Style, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mixing weight in [0, 1] between the style's two background colours (u, v in [0, 1])."""
    phase = rng.uniform(0, 2 * math.pi)
    p = style.pattern
    if p == "plain":
        w = np.zeros_like(u)
    elif p == "gradient":
        w = np.clip(v + rng.uniform(-0.1, 0.1), 0, 1)
    elif p == "waves":
        w = 0.5 + 0.5 * np.sin(2 * math.pi * 3 * v + 1.5 * np.sin(2 * math.pi * 2 * u + phase))
    elif p == "dots":
        f = 5
        du = (u * f + phase / 7) % 1 - 0.5
        dv = (v * f + phase / 5) % 1 - 0.5
        w = (np.hypot(du, dv) < 0.25).astype(float)
    elif p == "grid":
        f = 6
        w = (((u * f + phase) % 1 < 0.18) | ((v * f + phase) % 1 < 0.18)).astype(float)
    elif p == "stripes":
        w = ((v * 8 + phase) % 2 < 1).astype(float)
    elif p == "noise":
        coarse = rng.uniform(0, 1, (5, 5))
        iu = np.clip((u * 4).astype(int), 0, 4)
        iv = np.clip((v * 4).astype(int), 0, 4)
        w = coarse[iv, iu] * 0.6 + rng.uniform(0, 0.4, u.shape)
    elif p == "checker":
        f = 4
        w = (((np.floor(u * f + phase) + np.floor(v * f)) % 2) == 0).astype(float)
    elif p == "hatch":
        w = (((u + v) * 10 + phase) % 1 < 0.22).astype(float)
    elif p == "rings":
        cx, cy = rng.uniform(0.2, 0.8, 2)
        w = 0.5 + 0.5 * np.sin(2 * math.pi * 5 * np.hypot(u - cx, v - cy) + phase)
    else:
        raise ValueError(f"unknown pattern {p!r}")
    return w


# ---------------------------------------------------------------- rendering


def render(style: str, obj: str, seed: int) -> np.ndarray:
    """Render one (style, object) image as float32 HxWx3 in [0, 1], deterministic per seed."""
    return render_with_mask(style, obj, seed)[0]


def render_with_mask(style: str, obj: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`render`'s image and the object's pixel coverage (float32 HxW in [0, 1], outline included)."""
    check_concept("style", style)
    check_concept("object", obj)
    st = _STYLE_BY_NAME[style]
    rng = np.random.default_rng([seed, STYLE_NAMES.index(style), OBJECTS.index(obj)])
    n = IMAGE_SIZE * _SUPERSAMPLE
    v, u = np.mgrid[0:n, 0:n].astype(np.float64)
    u = (u + 0.5) / n
    v = (v + 0.5) / n

    jitter = rng.normal(0, 8, 3)
    bg0 = np.clip(np.array(st.background[0]) + jitter, 0, 255)
    bg1 = np.clip(np.array(st.background[1]) + jitter, 0, 255)
    w = _background(st, u, v, rng)[..., None]
    img = (1 - w) * bg0 + w * bg1

    cx, cy = rng.uniform(0.38, 0.62, 2)
    scale = rng.uniform(0.27, 0.36)
    angle = rng.uniform(-0.3, 0.3)
    ca, sa = math.cos(angle), math.sin(angle)
    dx, dy = (u - cx) / scale, (v - cy) / scale
    x, y = ca * dx + sa * dy, -sa * dx + ca * dy
    mask = _silhouette(obj, x, y)
    covered = mask
    if st.outline is not None:
        # a dilated copy of the silhouette, drawn first, makes the outline
        grown = _silhouette(obj, x * 0.86, y * 0.86)
        img[grown & ~mask] = st.outline
        covered = grown | mask
    fill = np.clip(np.array(st.fill) + rng.normal(0, 8, 3), 0, 255)
    img[mask] = fill

    img = img.reshape(IMAGE_SIZE, _SUPERSAMPLE, IMAGE_SIZE, _SUPERSAMPLE, 3).mean(axis=(1, 3))
    img = img / 255.0 + rng.normal(0, 0.015, img.shape)
    coverage = covered.reshape(IMAGE_SIZE, _SUPERSAMPLE, IMAGE_SIZE, _SUPERSAMPLE).mean(axis=(1, 3))
    return np.clip(img, 0, 1).astype(np.float32), coverage.astype(np.float32)


def render_batch(labels: list[tuple[str, str]], seeds: list[int]) -> np.ndarray:
    """Render many images: an array N x 3 x H x W in [0, 1]."""
    return np.stack([render(s, o, seed).transpose(2, 0, 1) for (s, o), seed in zip(labels, seeds)])
