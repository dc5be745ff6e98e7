"""Defects drawn onto a user's good images, with their masks, for fine-tuning when no real defect is at hand.

Three families, so the model does not learn one generator's look:
- `painted`: the project's own painters (omniad_edge.synth.paint_defect: scratch, crack, hole, stain, ...), labelled
  with their type;
- `cutpaste`: a piece of the same image cut out, turned, rescaled, its brightness shifted, and pasted elsewhere
  (the idea of CutPaste, Li et al. 2021: the anomaly is made of the part's own material, so only the broken
  continuity gives it away);
- `texture`: an irregular blob through which another texture shows, blended in part (the idea of DRAEM, Zavrtanik et
  al. 2021; the foreign textures here are the project's synthetic surfaces and the image itself at another scale
  and angle).
The last two are labelled `anomaly` (ANOMALY_LABEL): they are no named defect type. Every function takes an HxWx3
uint8 RGB image and a numpy Generator and returns (image, bool mask, label); a grey image stays grey.
"""
from __future__ import annotations

import numpy as np

from omniad_edge import synth

__all__ = ["ANOMALY_LABEL", "GENERATORS", "painted", "cutpaste", "texture", "synthesize"]

ANOMALY_LABEL = "anomaly"

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
    for _ in range(20):
        mask = _blob(rng, h, w)
        if mask.sum() >= _min_pixels(h, w):
            break
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


GENERATORS = {"painted": painted, "cutpaste": cutpaste, "texture": texture}


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
