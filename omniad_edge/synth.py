"""Synthetic inspection frames with defects, reproducible by seed (numpy + Pillow only). A public, stable API:

    from omniad_edge import synth
    s = synth.make_sample(synth.FIRST_UNSEEN_SEED)
    s.image            # (H, W, 3) uint8 RGB
    s.mask             # (H, W) bool, True on the defect; all False for a normal part
    s.part             # (H, W) bool, True on the part (an object's silhouette; everywhere for a texture)
    s.defect, s.bbox   # "scratch", (x0, y0, x1, y1) exclusive; None for a normal part

Surfaces (textures and simple objects) and defects are drawn procedurally; scale, contrast, position, lighting and
colour vary so that no single cue gives the answer away. Each seed draws the part, the defect and the lighting from
three independent streams, so `make_sample(seed, anomalous=False)` is the same part without its defect.

Stable means: a seed draws the same frame in every release (given the same numpy and Pillow), because the embedded
reference model was trained and tested on these frames. Which seeds it trained on is the business of
training/splits.py; the demo and the benchmarks draw from FIRST_UNSEEN_SEED on, frames it never trained on.
tests/test_synth.py pins a few frames, so a change to the drawing fails there instead of silently changing the data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .errors import OmniADError

__all__ = ["make_sample", "paint_defect", "Sample", "SynthError", "SURFACES", "OBJECTS", "DEFECTS",
           "FIRST_UNSEEN_SEED"]

SURFACES = ("metal", "fabric", "pcb", "wood", "disc", "bolt", "pill")
OBJECTS = ("disc", "bolt", "pill")
DEFECTS = ("scratch", "crack", "hole", "stain", "contamination", "missing", "misprint")

# The reference model trained and validated on seeds below this one (training/splits.py), so the demo and the
# benchmarks show it frames from here on (its test split starts here too).
FIRST_UNSEEN_SEED = 2_000_000

_MIN_DEFECT_PIXELS = 24  # at 224 px (scaled with the frame's area); smaller defects are redrawn


class SynthError(OmniADError, ValueError):
    """Bad arguments to the synthetic data generator."""


@dataclass(frozen=True)
class Sample:
    """One synthetic frame. `area` is the defect's share of the frame's pixels (0 for normal parts)."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    mask: np.ndarray  # (H, W) bool
    anomalous: bool
    surface: str
    defect: str | None
    bbox: tuple[int, int, int, int] | None  # x0, y0, x1, y1 (exclusive)
    area: float
    seed: int
    part: np.ndarray | None = None  # (H, W) bool: the part's pixels (all True for a texture surface)

    def meta(self) -> dict:
        return {"seed": self.seed, "surface": self.surface, "anomalous": self.anomalous, "defect": self.defect,
                "bbox": list(self.bbox) if self.bbox else None, "area": round(self.area, 6)}


def __getattr__(name):
    if name in ("SPLITS", "split_seed", "generate"):
        raise AttributeError(f"omniad_edge.synth.{name} moved to training/splits.py (the reference model's data "
                             "splits are not part of the runtime); draw frames with make_sample(seed), seeds from "
                             "FIRST_UNSEEN_SEED on for frames the reference model never trained on")
    raise AttributeError(f"module 'omniad_edge.synth' has no attribute {name!r}")


def make_sample(seed: int, size: int | tuple[int, int] = 224, anomalous: bool | None = None,
                surface: str | None = None, defect: str | None = None) -> Sample:
    """Draw one frame. anomalous/surface/defect override what the seed would pick (the rest still follows the seed).

    size is an int (square) or (height, width), each 32..4096 pixels.
    """
    h, w = _check_size(size)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SynthError(f"seed must be a non-negative int, got {seed!r}")
    if surface is not None and surface not in SURFACES:
        raise SynthError(f"surface must be one of {SURFACES}, got {surface!r}")
    if defect is not None and defect not in DEFECTS:
        raise SynthError(f"defect must be one of {DEFECTS}, got {defect!r}")
    if defect is not None and anomalous is False:
        raise SynthError("defect given with anomalous=False; a normal part has no defect")

    pick = np.random.default_rng([int(seed), 0])
    surface_pick = SURFACES[pick.integers(len(SURFACES))]
    anomalous_pick = bool(pick.random() < 0.5)
    defect_pick = DEFECTS[pick.integers(len(DEFECTS))]
    surface = surface or surface_pick
    anomalous = (defect is not None or anomalous_pick) if anomalous is None else anomalous
    defect = (defect or defect_pick) if anomalous else None

    part_rng = np.random.default_rng([int(seed), 1])
    img, part, backing = _SURFACE_FNS[surface](part_rng, h, w)

    mask = np.zeros((h, w), bool)
    if anomalous:
        defect_rng = np.random.default_rng([int(seed), 2])
        for _ in range(20):
            trial = img.copy()
            m = _DEFECT_FNS[defect](defect_rng, trial, part, backing)
            if m.sum() >= max(4.0, _MIN_DEFECT_PIXELS * _scale(h, w) ** 2):
                img, mask = trial, m
                break
        else:  # pragma: no cover - every drawer succeeds long before this on sane sizes
            raise SynthError(f"could not place a {defect} on a {h}x{w} {surface}")

    img = _light(np.random.default_rng([int(seed), 3]), img)
    image = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    bbox, area = None, 0.0
    if mask.any():
        ys, xs = np.nonzero(mask)
        bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        area = float(mask.mean())
    return Sample(image, mask, bool(anomalous), surface, defect, bbox, area, int(seed), part)


def paint_defect(image: np.ndarray, defect: str, seed: int, part: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Draw one of DEFECTS onto any HxWx3 uint8 RGB image (a user's own part): -> (new image, bool mask).

    `part` (HxW bool) limits the defect to the part's pixels (default: everywhere, as on a texture); a missing piece
    shows a dark backing. Stable by seed; no lighting is added, the image keeps its own.
    """
    if defect not in DEFECTS:
        raise SynthError(f"defect must be one of {DEFECTS}, got {defect!r}")
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise SynthError("image must be an HxWx3 uint8 RGB array")
    h, w = _check_size(image.shape[:2])
    part = np.ones((h, w), bool) if part is None else np.asarray(part, bool)
    if part.shape != (h, w) or not part.any():
        raise SynthError(f"part must be a non-empty {h}x{w} bool mask")
    rng = np.random.default_rng([int(seed), 4])
    backing = np.full(3, rng.uniform(0.02, 0.15), np.float32)
    base = image.astype(np.float32) / 255.0
    for _ in range(20):
        trial = base.copy()
        mask = _DEFECT_FNS[defect](rng, trial, part, backing)
        if mask.sum() >= max(4.0, _MIN_DEFECT_PIXELS * _scale(h, w) ** 2):
            return np.clip(trial * 255.0 + 0.5, 0, 255).astype(np.uint8), mask
    raise SynthError(f"could not place a {defect} on this {h}x{w} image")


def _check_size(size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(v, (int, np.integer)) and 32 <= v <= 4096 for v in size)):
        raise SynthError(f"size must be an int or (height, width) with each side in 32..4096, got {size!r}")
    return int(size[0]), int(size[1])


# ---------------------------------------------------------------- helpers (float images in [0, 1], HxWx3)

def _smooth_noise(rng, h, w, cells=6) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a small random grid upsampled bicubically."""
    small = rng.uniform(0, 255, (cells, cells)).astype(np.uint8)
    big = Image.fromarray(small, "L").resize((w, h), Image.BICUBIC)
    return np.asarray(big, np.float32) / 127.5 - 1.0


def _box_blur_1d(a: np.ndarray, k: int, axis: int) -> np.ndarray:
    k = max(1, int(k))
    pad = [(0, 0)] * a.ndim
    pad[axis] = (k, k)
    c = np.cumsum(np.pad(a, pad, mode="reflect"), axis=axis, dtype=np.float64)
    n = a.shape[axis]
    hi = np.take(c, np.arange(2 * k, 2 * k + n), axis=axis)
    lo = np.take(c, np.arange(0, n), axis=axis)
    return ((hi - lo) / (2 * k)).astype(np.float32)


def _colour(rng, base, jitter=0.08) -> np.ndarray:
    return np.clip(np.asarray(base, np.float32) + rng.uniform(-jitter, jitter, 3), 0.02, 0.98)


def _tint(grey: np.ndarray, colour: np.ndarray) -> np.ndarray:
    return grey[..., None] * colour[None, None, :] * 2.0


def _draw_mask(h, w, draw_fn, blur=0.0) -> np.ndarray:
    """Rasterise with PIL on an 'L' canvas; returns float alpha in [0, 1]."""
    canvas = Image.new("L", (w, h), 0)
    draw_fn(ImageDraw.Draw(canvas))
    if blur > 0:
        canvas = canvas.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(canvas, np.float32) / 255.0


def _blend(img, alpha, colour):
    a = alpha[..., None]
    img *= 1.0 - a
    img += a * np.asarray(colour, np.float32)


def _random_point(rng, part: np.ndarray, margin: int = 4) -> tuple[int, int]:
    """A random (x, y) on the part (the whole frame for textures)."""
    h, w = part.shape
    ys, xs = np.nonzero(part[margin:h - margin, margin:w - margin])
    if len(xs) == 0:
        return w // 2, h // 2
    i = rng.integers(len(xs))
    return int(xs[i]) + margin, int(ys[i]) + margin


def _scale(h, w) -> float:
    """Defect sizes are drawn for a 224 px frame and scaled to the frame's short side."""
    return min(h, w) / 224.0


# ---------------------------------------------------------------- surfaces: -> (img, part mask, backing colour)

def _metal(rng, h, w):
    vertical = rng.random() < 0.5
    hh, ww = (w, h) if vertical else (h, w)
    streaks = rng.normal(0, 1, (hh, 1)).astype(np.float32) * rng.uniform(0.02, 0.06)
    fine = _box_blur_1d(rng.normal(0, 1, (hh, ww)).astype(np.float32), rng.integers(8, 30), axis=1)
    grey = 0.5 + streaks + fine * rng.uniform(0.05, 0.15)
    if vertical:
        grey = grey.T
    grey = grey + 0.05 * _smooth_noise(rng, h, w, 4)
    base = [(0.45, 0.46, 0.48), (0.55, 0.50, 0.38), (0.40, 0.40, 0.40), (0.50, 0.45, 0.42)][rng.integers(4)]
    img = _tint(np.clip(grey, 0, 1), _colour(rng, base, 0.05))
    return img, np.ones((h, w), bool), _colour(rng, (0.08, 0.08, 0.09), 0.03)


def _fabric(rng, h, w):
    period = rng.uniform(4.0, 10.0) * _scale(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ang = rng.uniform(-0.3, 0.3)
    u = xx * math.cos(ang) + yy * math.sin(ang)
    v = -xx * math.sin(ang) + yy * math.cos(ang)
    over = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    warp = 0.5 + 0.5 * np.sin(2 * math.pi * v / period)
    weft = 0.5 + 0.5 * np.sin(2 * math.pi * u / period)
    grey = 0.35 + 0.3 * (over * warp + (1 - over) * weft)
    grey += rng.normal(0, 0.03, (h, w)).astype(np.float32)
    hue = [(0.55, 0.20, 0.20), (0.20, 0.30, 0.55), (0.50, 0.48, 0.40), (0.25, 0.45, 0.25), (0.45, 0.35, 0.50)]
    img = _tint(grey, _colour(rng, hue[rng.integers(len(hue))], 0.08))
    return img, np.ones((h, w), bool), _colour(rng, (0.05, 0.05, 0.05), 0.03)


def _pcb(rng, h, w):
    s = _scale(h, w)
    board = _colour(rng, [(0.10, 0.38, 0.18), (0.10, 0.20, 0.45), (0.12, 0.12, 0.14)][rng.integers(3)], 0.05)
    img = np.empty((h, w, 3), np.float32)
    img[:] = board
    img *= (1.0 + 0.05 * _smooth_noise(rng, h, w, 5))[..., None]
    copper = _colour(rng, (0.80, 0.62, 0.30), 0.08)
    pitch = int(rng.uniform(18, 34) * s)
    ox, oy = rng.integers(0, pitch, 2)
    width = max(1, int(rng.uniform(2, 4) * s))

    def draw(d):
        for y in range(int(oy), h, pitch):
            for x in range(int(ox), w, pitch):
                r = rng.uniform(2.5, 5) * s
                d.ellipse([x - r, y - r, x + r, y + r], fill=255)
                if rng.random() < 0.5:
                    d.line([x, y, x + pitch, y], fill=255, width=width)
                if rng.random() < 0.35:
                    d.line([x, y, x, y + pitch], fill=255, width=width)
            if rng.random() < 0.3:
                x0 = int(rng.integers(0, w))
                d.rectangle([x0, y + pitch // 3, x0 + int(pitch * 0.8), y + pitch // 3 + int(pitch * 0.4)],
                            fill=160)

    _blend(img, _draw_mask(h, w, draw), copper)
    return img, np.ones((h, w), bool), _colour(rng, (0.70, 0.68, 0.60), 0.05)


def _wood(rng, h, w):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    freq = rng.uniform(0.15, 0.45) / _scale(h, w)
    warp = _smooth_noise(rng, h, w, 5) * rng.uniform(6, 20) * _scale(h, w)
    coord = (yy if rng.random() < 0.5 else xx) + warp
    rings = 0.5 + 0.5 * np.sin(coord * freq + 2.0 * _smooth_noise(rng, h, w, 3))
    grey = 0.35 + 0.18 * rings ** 3 + 0.03 * rng.normal(0, 1, (h, w)).astype(np.float32)
    img = _tint(grey, _colour(rng, [(0.62, 0.42, 0.25), (0.55, 0.38, 0.22), (0.70, 0.55, 0.38)][rng.integers(3)]))
    return img, np.ones((h, w), bool), _colour(rng, (0.10, 0.07, 0.05), 0.03)


def _background(rng, h, w):
    bg = _colour(rng, [(0.85, 0.85, 0.85), (0.20, 0.22, 0.25), (0.30, 0.45, 0.60), (0.75, 0.70, 0.60)]
                 [rng.integers(4)], 0.06)
    img = np.empty((h, w, 3), np.float32)
    img[:] = bg
    img *= (1.0 + 0.06 * _smooth_noise(rng, h, w, 3))[..., None]
    return img, bg


def _object(rng, h, w, shape_fn, colour):
    img, bg = _background(rng, h, w)
    s = _scale(h, w)
    cx = w / 2 + rng.uniform(-0.12, 0.12) * w
    cy = h / 2 + rng.uniform(-0.12, 0.12) * h
    size = rng.uniform(0.28, 0.4) * min(h, w)
    ang = rng.uniform(0, math.pi)
    alpha = _draw_mask(h, w, lambda d: shape_fn(d, cx, cy, size, ang, s))
    part = alpha > 0.5
    # shading: brighter towards a random light direction
    la = rng.uniform(0, 2 * math.pi)
    shade = 1.0 + 0.25 * (((np.arange(w, dtype=np.float32)[None, :] - cx) * math.cos(la)
                           + (np.arange(h, dtype=np.float32)[:, None] - cy) * math.sin(la)) / size)
    obj = _colour(rng, colour, 0.08)[None, None, :] * np.clip(shade, 0.6, 1.3)[..., None]
    _blend(img, alpha, 0.0)
    img += alpha[..., None] * obj
    return img, part, bg


def _rotated(points, cx, cy, ang):
    c, s = math.cos(ang), math.sin(ang)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def _disc(rng, h, w):
    def shape(d, cx, cy, size, ang, s):
        d.ellipse([cx - size, cy - size, cx + size, cy + size], fill=255)
        r = size * 0.25
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=180)  # the centre boss reads darker
    return _object(rng, h, w, shape, [(0.70, 0.70, 0.72), (0.75, 0.55, 0.30), (0.30, 0.30, 0.32)][rng.integers(3)])


def _bolt(rng, h, w):
    def shape(d, cx, cy, size, ang, s):
        head = [(-size, -size * 0.45), (-size * 0.55, -size * 0.45), (-size * 0.55, size * 0.45),
                (-size, size * 0.45)]
        d.polygon(_rotated(head, cx, cy, ang), fill=255)
        shaft = [(-size * 0.55, -size * 0.25), (size, -size * 0.25), (size, size * 0.25),
                 (-size * 0.55, size * 0.25)]
        d.polygon(_rotated(shaft, cx, cy, ang), fill=230)
        for t in np.linspace(-0.35, 0.95, 10):  # thread ridges
            ridge = [(size * t, -size * 0.25), (size * (t + 0.04), -size * 0.25), (size * (t + 0.04), size * 0.25),
                     (size * t, size * 0.25)]
            d.polygon(_rotated(ridge, cx, cy, ang), fill=200)
    return _object(rng, h, w, shape, [(0.62, 0.62, 0.65), (0.72, 0.60, 0.30)][rng.integers(2)])


def _pill(rng, h, w):
    def shape(d, cx, cy, size, ang, s):
        r = size * 0.42
        n = 24
        pts = [(size * 0.6 + r * math.cos(t), r * math.sin(t)) for t in np.linspace(-math.pi / 2, math.pi / 2, n)]
        pts += [(-size * 0.6 + r * math.cos(t), r * math.sin(t)) for t in np.linspace(math.pi / 2, 1.5 * math.pi, n)]
        d.polygon(_rotated(pts, cx, cy, ang), fill=255)
    return _object(rng, h, w, shape, [(0.92, 0.92, 0.88), (0.85, 0.35, 0.30), (0.35, 0.55, 0.85)][rng.integers(3)])


_SURFACE_FNS = {"metal": _metal, "fabric": _fabric, "pcb": _pcb, "wood": _wood, "disc": _disc, "bolt": _bolt,
                "pill": _pill}


# ---------------------------------------------------------------- defects: modify img in place, return bool mask

def _local_mean(img, part):
    n = int(part.sum())
    if n == 0 or n == part.size:
        return img.reshape(-1, 3).mean(axis=0)
    return np.tensordot(part.astype(np.float32), img, axes=([0, 1], [0, 1])) / n


def _contrast_colour(rng, img, part, strength):
    """A colour clearly lighter or darker than the surface (strength ~ 0.25..0.6)."""
    mean = _local_mean(img, part)
    lum = float(mean.mean())
    sign = -1.0 if lum > 0.5 or rng.random() < 0.3 else 1.0
    return np.clip(mean + sign * strength, 0.0, 1.0)


def _distinct(rng, img, part, palette, min_dist=0.3):
    """A palette colour that stands out from the surface (a stain the colour of the part is not a label)."""
    mean = _local_mean(img, part)
    dist = [float(np.abs(np.asarray(c) - mean).max()) for c in palette]
    ok = [c for c, d in zip(palette, dist) if d >= min_dist] or [palette[int(np.argmax(dist))]]
    return ok[rng.integers(len(ok))]


def _polyline(rng, x, y, length, steps, wobble):
    ang = rng.uniform(0, 2 * math.pi)
    pts = [(x, y)]
    for _ in range(steps):
        ang += rng.normal(0, wobble)
        x += math.cos(ang) * length / steps
        y += math.sin(ang) * length / steps
        pts.append((x, y))
    return pts


def _scratch(rng, img, part, backing):
    h, w = part.shape
    s = _scale(h, w)
    x, y = _random_point(rng, part)
    pts = _polyline(rng, x, y, rng.uniform(30, 110) * s, 6, 0.08)
    width = max(1, int(round(rng.uniform(1, 3) * s)))
    alpha = _draw_mask(h, w, lambda d: d.line(pts, fill=255, width=width)) * part
    _blend(img, alpha * rng.uniform(0.7, 1.0), _contrast_colour(rng, img, part, rng.uniform(0.3, 0.55)))
    return alpha > 0.3


def _crack(rng, img, part, backing):
    h, w = part.shape
    s = _scale(h, w)
    x, y = _random_point(rng, part)
    main = _polyline(rng, x, y, rng.uniform(25, 80) * s, 12, 0.6)
    branches = [_polyline(rng, *main[rng.integers(2, len(main))], rng.uniform(8, 25) * s, 5, 0.7)
                for _ in range(rng.integers(1, 4))]
    width = max(1, int(round(rng.uniform(1.5, 3) * s)))

    def draw(d):
        d.line(main, fill=255, width=width)
        for b in branches:
            d.line(b, fill=255, width=max(1, width - 1))
    alpha = _draw_mask(h, w, draw) * part
    dark = _local_mean(img, part) * rng.uniform(0.05, 0.3)
    _blend(img, alpha, dark)
    return alpha > 0.3


def _hole(rng, img, part, backing):
    h, w = part.shape
    s = _scale(h, w)
    x, y = _random_point(rng, part, margin=8)
    rx, ry = rng.uniform(3, 12, 2) * s
    rim = max(1.0, 1.5 * s)
    outer = _draw_mask(h, w, lambda d: d.ellipse([x - rx - rim, y - ry - rim, x + rx + rim, y + ry + rim],
                                                  fill=255)) * part
    inner = _draw_mask(h, w, lambda d: d.ellipse([x - rx, y - ry, x + rx, y + ry], fill=255)) * part
    _blend(img, outer * 0.6, np.clip(_local_mean(img, part) * 1.4, 0, 1))  # raised, lit rim
    _blend(img, inner, backing * rng.uniform(0.5, 1.0))
    return outer > 0.3


def _blob(rng, h, w, x, y, r):
    def draw(d):
        for _ in range(rng.integers(3, 7)):
            dx, dy = rng.normal(0, r * 0.5, 2)
            ax, ay = rng.uniform(0.4, 1.0, 2) * r
            d.ellipse([x + dx - ax, y + dy - ay, x + dx + ax, y + dy + ay], fill=255)
    return draw


def _stain(rng, img, part, backing):
    h, w = part.shape
    s = _scale(h, w)
    x, y = _random_point(rng, part)
    r = rng.uniform(8, 28) * s
    alpha = _draw_mask(h, w, _blob(rng, h, w, x, y, r), blur=r * 0.25) * part
    colour = _distinct(rng, img, part, [(0.35, 0.25, 0.10), (0.12, 0.10, 0.08), (0.60, 0.55, 0.15),
                                        (0.85, 0.80, 0.65), (0.30, 0.30, 0.40)])
    strength = rng.uniform(0.6, 0.9)
    _blend(img, alpha * strength, _colour(rng, colour, 0.05))
    return alpha > 0.35


def _contamination(rng, img, part, backing):
    h, w = part.shape
    s = _scale(h, w)
    x, y = _random_point(rng, part)
    spread = rng.uniform(6, 22) * s
    specks = [(x + dx, y + dy, rng.uniform(1, 3.5) * s) for dx, dy in rng.normal(0, spread, (rng.integers(4, 14), 2))]
    fibre = _polyline(rng, x, y, rng.uniform(10, 30) * s, 6, 0.9) if rng.random() < 0.5 else None

    def draw(d):
        for px, py, r in specks:
            d.ellipse([px - r, py - r, px + r, py + r], fill=255)
        if fibre:
            d.line(fibre, fill=255, width=max(1, int(s)))
    alpha = _draw_mask(h, w, draw) * part
    colour = _distinct(rng, img, part, [(0.05, 0.05, 0.05), (0.95, 0.95, 0.92), (0.45, 0.30, 0.15)])
    _blend(img, alpha, _colour(rng, colour, 0.04))
    return alpha > 0.3


def _missing(rng, img, part, backing):
    h, w = part.shape
    s = _scale(h, w)
    if part.all():  # a texture: a torn-out patch showing the backing
        x, y = _random_point(rng, part, margin=10)
        r = rng.uniform(10, 26) * s
    else:  # an object: a chunk bitten off at its edge
        ys, xs = np.nonzero(part ^ np.asarray(Image.fromarray(part.astype(np.uint8) * 255)
                                              .filter(ImageFilter.MinFilter(3))).astype(bool))
        i = rng.integers(len(xs))
        x, y = int(xs[i]), int(ys[i])
        r = rng.uniform(12, 30) * s
        backing = _local_mean(img, ~part)
    n = rng.integers(5, 9)
    angles = np.sort(rng.uniform(0, 2 * math.pi, n))
    pts = [(x + r * rng.uniform(0.6, 1.0) * math.cos(a), y + r * rng.uniform(0.6, 1.0) * math.sin(a)) for a in angles]
    alpha = _draw_mask(h, w, lambda d: d.polygon(pts, fill=255)) * part
    _blend(img, alpha, backing)
    return alpha > 0.3


def _misprint(rng, img, part, backing):
    h, w = part.shape
    s = _scale(h, w)
    x, y = _random_point(rng, part, margin=12)
    ink = _colour(rng, _distinct(rng, img, part, [(0.85, 0.10, 0.10), (0.05, 0.05, 0.60), (0.05, 0.05, 0.05),
                                                  (0.95, 0.85, 0.10)]), 0.05)
    gh = rng.uniform(5, 10) * s
    gw = gh * rng.uniform(0.5, 0.8)
    n_chars = int(rng.integers(3, 8))
    lines = int(rng.integers(1, 3))
    smear = rng.uniform(0, 2.0) * s

    def draw(d):  # glyph-like strokes: a short "word" of bars and ticks, maybe two lines
        for line in range(lines):
            yl = y + line * gh * 1.5
            for c in range(n_chars):
                xc = x + c * gw * 1.3
                for _ in range(rng.integers(2, 4)):
                    kind = rng.integers(3)
                    if kind == 0:
                        d.line([xc, yl, xc, yl + gh], fill=255, width=max(1, int(1.5 * s)))
                    elif kind == 1:
                        yy = yl + rng.uniform(0, gh)
                        d.line([xc, yy, xc + gw, yy], fill=255, width=max(1, int(1.5 * s)))
                    else:
                        d.line([xc, yl + gh, xc + gw, yl], fill=255, width=max(1, int(1.5 * s)))
    alpha = _draw_mask(h, w, draw, blur=smear * 0.5) * part
    _blend(img, np.minimum(alpha * 1.3, 1.0), ink)
    return alpha > 0.3


_DEFECT_FNS = {"scratch": _scratch, "crack": _crack, "hole": _hole, "stain": _stain,
               "contamination": _contamination, "missing": _missing, "misprint": _misprint}


# ---------------------------------------------------------------- lighting and sensor

def _light(rng, img):
    h, w, _ = img.shape
    a = rng.uniform(0, 2 * math.pi)
    k = rng.uniform(0.0, 0.4)
    gx = ((np.arange(w, dtype=np.float32) / w - 0.5) * (math.cos(a) * k))[None, :]
    gy = ((np.arange(h, dtype=np.float32) / h - 0.5) * (math.sin(a) * k))[:, None]
    gain = rng.uniform(0.75, 1.2) * (1.0 + gx + gy)
    contrast = rng.uniform(0.7, 1.25)
    out = (img - 0.45) * contrast + 0.45  # a fixed pivot, so the defect does not shift the whole frame
    out *= gain[..., None]
    out *= rng.uniform(0.9, 1.1, 3).astype(np.float32)  # white balance
    out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(rng.uniform(0.005, 0.025))
    return out
