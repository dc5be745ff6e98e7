"""Defects drawn onto a user's good images, with their masks, for fine-tuning when no real defect is at hand.

Five families, so the model does not learn one generator's look:
- `painted`: the project's own painters (omniad_edge.synth.paint_defect: scratch, crack, hole, stain, ...), labelled
  with their type;
- `cutpaste`: a piece of the same image cut out, turned, rescaled, its brightness shifted, and pasted elsewhere
  (the idea of CutPaste, Li et al. 2021: the anomaly is made of the part's own material, so only the broken
  continuity gives it away);
- `texture`: an irregular blob through which another texture shows, blended in part (the idea of DRAEM, Zavrtanik et
  al. 2021; the foreign textures here are the project's synthetic surfaces and the image itself at another scale
  and angle).
- `resample`: a change of the part's shape, not of its material: the pixels of a blob are fetched from elsewhere
  through a geometric map, either an affine map about the blob's centre (turned, sheared, scaled) or a smooth random
  displacement field (a coarse grid of random offsets, bicubically upsampled), faded in over the blob's rim and
  sampled bilinearly;
- `frequency`: a change of the texture's frequency content inside a blob: a sharpening (unsharp mask with a box
  kernel), a band boost or cut (the difference of two box-filtered copies scaled), or a loss of resolution (the
  region resampled to a coarse pixel grid, box down and nearest up, or a median filter).
The last four are labelled `anomaly` (ANOMALY_LABEL): they are no named defect type. Every function takes an HxWx3
uint8 RGB image and a numpy Generator and returns (image, bool mask, label); a grey image stays grey. `resample` and
`frequency` fall back to `painted` when what they drew is too faint to see (a flat region moved or filtered): a label
with no visible defect would teach the model to flag good images.
"""
from __future__ import annotations

import numpy as np

from omniad_edge import synth

__all__ = ["ANOMALY_LABEL", "GENERATORS", "painted", "cutpaste", "texture", "resample", "frequency",
           "synthesize", "MIN_MEAN_CHANGE"]

ANOMALY_LABEL = "anomaly"

MIN_MEAN_CHANGE = 6.0  # grey levels: a resample/frequency defect changing its mask less falls back to painted

_FOREIGN = ("metal", "fabric", "pcb", "wood")  # synth surfaces that are textures (fill the frame)


def _is_grey(image: np.ndarray) -> bool:
    return bool((image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all())


def _grey(image: np.ndarray) -> np.ndarray:
    luma = image.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32)
    return np.repeat(np.clip(luma + 0.5, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def _min_pixels(h: int, w: int) -> int:
    return max(12, int(0.002 * h * w))


def painted(image: np.ndarray, rng: np.random.Generator):
    defect = synth.DEFECTS[int(rng.integers(len(synth.DEFECTS)))]
    out, mask = synth.paint_defect(image, defect, int(rng.integers(2**31)))
    return (_grey(out) if _is_grey(image) else out), mask, defect


def _blob(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """An irregular, mostly connected region: a radial falloff around a random centre, roughened by smooth noise."""
    from PIL import Image

    s = min(h, w)
    cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
    ry, rx = rng.uniform(0.04, 0.16, 2) * s
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    fall = 1.0 - np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    cells = int(rng.integers(3, 9))
    small = rng.uniform(0, 255, (cells, cells)).astype(np.uint8)
    noise = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.float32) / 127.5 - 1.0
    return fall + 0.45 * noise > 0.0


def _region(rng: np.random.Generator, h: int, w: int, factor: int = 1) -> np.ndarray:
    """A blob of at least `factor` times the smallest visible defect (a few tries)."""
    for _ in range(20):
        mask = _blob(rng, h, w)
        if mask.sum() >= factor * _min_pixels(h, w):
            break
    return mask


def _foreign(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Another texture of the image's size: a synthetic surface, or the image itself zoomed and turned."""
    from PIL import Image

    h, w = image.shape[:2]
    if rng.random() < 0.5:
        seed = int(rng.integers(synth.FIRST_UNSEEN_SEED))
        surface = _FOREIGN[int(rng.integers(len(_FOREIGN)))]
        return synth.make_sample(seed, size=(h, w), anomalous=False, surface=surface).image
    zoom = rng.uniform(1.6, 3.0)
    ch, cw = max(8, int(h / zoom)), max(8, int(w / zoom))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = Image.fromarray(image[y0:y0 + ch, x0:x0 + cw]).rotate(float(rng.choice([90, 180, 270])), expand=True)
    return np.asarray(crop.resize((w, h), Image.BICUBIC), np.uint8)


def texture(image: np.ndarray, rng: np.random.Generator):
    h, w = image.shape[:2]
    mask = _region(rng, h, w)
    other = _foreign(image, rng).astype(np.float32)
    beta = rng.uniform(0.5, 1.0)
    a = mask[..., None].astype(np.float32) * beta
    out = np.clip(image.astype(np.float32) * (1 - a) + other * a + 0.5, 0, 255).astype(np.uint8)
    return (_grey(out) if _is_grey(image) else out), mask, ANOMALY_LABEL


def cutpaste(image: np.ndarray, rng: np.random.Generator):
    from PIL import Image

    h, w = image.shape[:2]
    s = min(h, w)
    scar = rng.random() < 0.4  # a long thin strip, else a patch
    if scar:
        ph, pw = int(rng.uniform(0.02, 0.05) * s) + 2, int(rng.uniform(0.15, 0.35) * s)
    else:
        area = rng.uniform(0.01, 0.06) * h * w
        aspect = np.exp(rng.uniform(np.log(0.4), np.log(2.5)))
        ph, pw = int(np.sqrt(area * aspect)), int(np.sqrt(area / aspect))
    ph, pw = max(4, min(ph, h - 2)), max(4, min(pw, w - 2))
    y0, x0 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    patch = image[y0:y0 + ph, x0:x0 + pw].astype(np.float32)
    gain, shift = rng.uniform(0.75, 1.3), rng.uniform(-25, 25)
    patch = np.clip((patch - patch.mean()) * rng.uniform(0.7, 1.4) + patch.mean() * gain + shift, 0, 255)
    angle = float(rng.uniform(-60, 60) if scar else rng.choice([0, 90, 180, 270]) + rng.uniform(-20, 20))
    piece = Image.fromarray(patch.astype(np.uint8)).rotate(angle, expand=True, resample=Image.BILINEAR)
    alpha = Image.fromarray(np.full((ph, pw), 255, np.uint8)).rotate(angle, expand=True, resample=Image.BILINEAR)
    piece = np.asarray(piece, np.float32)
    alpha = np.asarray(alpha, np.float32) / 255.0
    qh, qw = alpha.shape
    qh, qw = min(qh, h), min(qw, w)
    piece, alpha = piece[:qh, :qw], alpha[:qh, :qw]
    ty, tx = int(rng.integers(0, h - qh + 1)), int(rng.integers(0, w - qw + 1))
    out = image.astype(np.float32)
    region = out[ty:ty + qh, tx:tx + qw]
    region[:] = region * (1 - alpha[..., None]) + piece * alpha[..., None]
    mask = np.zeros((h, w), bool)
    mask[ty:ty + qh, tx:tx + qw] = alpha > 0.5
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    return (_grey(out) if _is_grey(image) else out), mask, ANOMALY_LABEL


def _box(image: np.ndarray, k: int) -> np.ndarray:
    """Mean over a k x k window (k odd; edges reflected) of an (H, W, C) float32 image, by cumulative sums."""
    r = k // 2
    p = np.pad(image, ((r + 1, r), (r + 1, r), (0, 0)), mode="reflect")
    c = p.cumsum(0).cumsum(1)
    h, w = image.shape[:2]
    return (c[k:k + h, k:k + w] - c[:h, k:k + w] - c[k:k + h, :w] + c[:h, :w]) / (k * k)


def _fade(mask: np.ndarray, k: int) -> np.ndarray:
    """The mask as float, its rim softened by a box filter (1 deep inside, 0 well outside)."""
    return np.clip(_box(mask[..., None].astype(np.float32), k)[..., 0] * 2.0, 0.0, 1.0)


def _bilinear(image: np.ndarray, sy: np.ndarray, sx: np.ndarray) -> np.ndarray:
    """image (H, W, C) float32 sampled at the float coordinates (sy, sx), clamped to the frame."""
    h, w = image.shape[:2]
    sy, sx = np.clip(sy, 0, h - 1), np.clip(sx, 0, w - 1)
    y0, x0 = np.floor(sy).astype(int), np.floor(sx).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (sy - y0)[..., None], (sx - x0)[..., None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def _visible_or_painted(image, out, mask, rng):
    """(out, mask, ANOMALY_LABEL) when the change inside the mask is visible, else a `painted` defect instead."""
    change = np.abs(out.astype(np.float32) - image.astype(np.float32)).max(axis=2)
    if mask.sum() >= _min_pixels(*mask.shape) and float(change[mask].mean()) >= MIN_MEAN_CHANGE:
        return (_grey(out) if _is_grey(image) else out), mask, ANOMALY_LABEL
    return painted(image, rng)


def resample(image: np.ndarray, rng: np.random.Generator):
    from PIL import Image

    h, w = image.shape[:2]
    mask = _region(rng, h, w, 4)
    ys, xs = np.nonzero(mask)
    cy, cx = float(ys.mean()), float(xs.mean())
    extent = max(4.0, float(np.sqrt(mask.sum())))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if rng.random() < 0.5:  # affine about the blob's centre: where each pixel of the blob is fetched from
        a = np.deg2rad(rng.uniform(12, 60) * rng.choice([-1, 1]))
        scale = np.exp(rng.uniform(-0.35, 0.35))
        shear = rng.uniform(-0.4, 0.4)
        m = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ np.array([[1, shear], [0, 1]]) / scale
        dy, dx = yy - cy, xx - cx
        sy, sx = m[0, 0] * dy + m[0, 1] * dx - dy, m[1, 0] * dy + m[1, 1] * dx - dx  # M.d - d
    else:  # a smooth random displacement field, a fraction of the blob's size
        cells = int(rng.integers(2, 6))
        amp = rng.uniform(0.15, 0.4) * extent
        field = [np.asarray(Image.fromarray(rng.uniform(-1, 1, (cells, cells)).astype(np.float32)).resize(
            (w, h), Image.BICUBIC), np.float32) * amp for _ in range(2)]
        sy, sx = field
    weight = _fade(mask, 2 * int(rng.integers(2, 5)) + 1)  # the map is faded in across the rim: no cut edge
    f = image.astype(np.float32)
    out = _bilinear(f, yy + sy * weight, xx + sx * weight)
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    return _visible_or_painted(image, out, mask, rng)


def frequency(image: np.ndarray, rng: np.random.Generator):
    from PIL import Image, ImageFilter

    h, w = image.shape[:2]
    mask = _region(rng, h, w, 4)
    f = image.astype(np.float32)
    mode = int(rng.integers(4))
    if mode == 0:  # sharpen: unsharp mask with a box kernel, edges exaggerated
        k = 2 * int(rng.integers(1, 4)) + 1
        alt = f + rng.uniform(2.5, 5.0) * (f - _box(f, k))
    elif mode == 1:  # one band of scales boosted or cut: the difference of two box filters
        k1 = 2 * int(rng.integers(1, 3)) + 1
        k2 = k1 + 2 * int(rng.integers(2, 5))
        band = _box(f, k1) - _box(f, k2)
        alt = f + band * (rng.uniform(1.5, 3.0) if rng.random() < 0.6 else -1.0)
    elif mode == 2:  # coarse resolution: box down, nearest up (blocks the size of a few pixels)
        step = int(rng.integers(4, 10))
        small = Image.fromarray(image).resize((max(1, w // step), max(1, h // step)), Image.BOX)
        alt = np.asarray(small.resize((w, h), Image.NEAREST), np.float32)
    else:  # a median filter: fine grain gone, edges kept
        alt = np.asarray(Image.fromarray(image).filter(ImageFilter.MedianFilter(int(rng.choice([7, 9, 11])))),
                         np.float32)
    a = _fade(mask, 3)[..., None]
    out = np.clip(f * (1 - a) + alt * a + 0.5, 0, 255).astype(np.uint8)
    return _visible_or_painted(image, out, mask, rng)


GENERATORS = {"painted": painted, "cutpaste": cutpaste, "texture": texture, "resample": resample,
              "frequency": frequency}


def synthesize(image: np.ndarray, rng: np.random.Generator, kinds=tuple(GENERATORS)):
    """One defect from a generator picked at random among `kinds` -> (image, mask, label). A defect that changed
    too few pixels to be seen (a paste of the part onto an identical-looking place) is drawn again."""
    for _ in range(10):
        out, mask, label = GENERATORS[kinds[int(rng.integers(len(kinds)))]](image, rng)
        changed = np.abs(out.astype(np.int16) - image.astype(np.int16)).max(axis=2) > 8
        seen = int((changed & mask).sum())
        if seen >= _min_pixels(*image.shape[:2]) and seen >= 0.3 * mask.sum():
            return out, mask, label
    return out, mask, label
