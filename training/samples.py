"""Training samples for a user's part, in the bundle's output format: an image and its target text (the codec's mask
text on the grid, the explanation, the answer), built from a folder of good images and, when there is one, an
annotated defect set (training/userdata.py); defects are drawn onto good images (training/anomalies.py) where no
real one is at hand.

    data = load_part("good/", "mvtec/bottle")          # held-out split made here, by seed
    spec = part_spec(S.load_spec(), data.labels)        # the reference grammar + this data set's defect labels
    builder = SampleBuilder(data)
    item = builder.draw(rng)                            # Labeled: image, mask, defect
    text = target(spec, item)                           # "<seg>...</seg><think>...</think><answer>...</answer>"
    held = builder.held_out()                           # fixed evaluation frames, never trained on

Consumers: `omniad-edge adapt` (training/adapt.py) and any other trainer that wants these samples (every sample is
an image plus a target string).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omniad_edge.errors import DataError

from . import spec as S
from .anomalies import ANOMALY_LABEL, GENERATORS, synthesize
from .userdata import IMAGE_EXTENSIONS, Labeled, MVTecSet, read_good, read_mvtec

__all__ = ["PartData", "SampleBuilder", "load_part", "part_spec", "grid", "target"]


@dataclass
class PartData:
    train_good: list[Labeled]
    train_defects: list[Labeled]
    held_good: list[Labeled]
    held_defects: list[Labeled]
    labels: list[str]  # mask labels these samples use beyond the reference grammar's, in a fixed order


def _split(items: list, held_out: float, rng: np.random.Generator, keep_one: bool) -> tuple[list, list]:
    order = [items[i] for i in rng.permutation(len(items))]
    n = int(round(held_out * len(order)))
    n = max(n, 1) if keep_one and len(order) >= 2 else n
    n = min(n, len(order) - 1) if order else 0  # at least one to train on
    return order[n:], order[:n]


def load_part(normal_dir: str | Path, defects_dir: str | Path | None = None, held_out: float = 0.2,
              seed: int = 0) -> PartData:
    """Good images of NORMAL_DIR (+ the good and defect images of an MVTec-layout DEFECTS_DIR), split into training
    and held-out images by seed: a fraction `held_out` of the good images (at least one) and of each defect type."""
    if not 0.0 < held_out < 1.0:
        raise DataError(f"held_out must be in (0, 1), got {held_out}")
    mv = read_mvtec(defects_dir) if defects_dir is not None else MVTecSet([], [])
    folder = Path(normal_dir)
    has_images = folder.is_dir() and any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir())
    first = (mv.good + mv.defects)[:1]
    normal = read_good(folder, first[0].original if first else None) if has_images or not mv.defects else []
    seen = {Path(item.source).resolve() for item in normal}  # NORMAL_DIR may be the set's own train/good
    good = normal + [item for item in mv.good if Path(item.source).resolve() not in seen]
    defects, types = mv.defects, mv.types
    if not good:
        raise DataError(f"{defects_dir}: only defect images ({len(defects)}), and {normal_dir} has no image: adapt "
                        "needs good images of the part to learn what normal looks like")
    if len(good) < 2:
        raise DataError(f"{normal_dir}: {len(good)} good image; adapt needs at least 2 (one is held out to "
                        "evaluate the model)")
    rng = np.random.default_rng(seed)
    train_good, held_good = _split(good, held_out, rng, keep_one=True)
    train_defects, held_defects = [], []
    for t in types:
        tr, he = _split([d for d in defects if d.defect == t], held_out, rng, keep_one=True)
        train_defects += tr
        held_defects += he
    return PartData(train_good, train_defects, held_good, held_defects, types + [ANOMALY_LABEL])


def part_spec(base: dict, labels: list[str]) -> dict:
    """The base output spec with `labels` appended to the mask labels (those it already has, in any case, are
    kept where they are)."""
    spec = copy.deepcopy(base)
    have = spec["output"]["mask"]["labels"]
    have += [name for name in labels if name.lower() not in {h.lower() for h in have}]
    return spec


def grid(spec: dict, item: Labeled) -> np.ndarray:
    m = spec["output"]["mask"]
    if not item.anomalous:
        return np.full((m["grid"], m["grid"]), m["background"], np.uint8)
    labels = [name.lower() for name in m["labels"]]
    return S.defect_grid(spec, item.mask, labels.index(item.defect.lower()))


def target(spec: dict, item: Labeled) -> str:
    """The assistant's text for one sample, in the spec's order and tags."""
    return S.target_text(spec, grid(spec, item))


def _geometry(image: np.ndarray, mask: np.ndarray, k: int):
    """k in 0..7: one of the 8 flips/rotations of a square (rotations by 90 degrees only for square images)."""
    if image.shape[0] != image.shape[1]:
        k &= 0b101  # flips only
    if k & 4:
        image, mask = image[:, ::-1], mask[:, ::-1]
    r = k & 3
    return np.ascontiguousarray(np.rot90(image, r)), np.ascontiguousarray(np.rot90(mask, r))


def _viewpoint(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, turn: float = 8.0,
               shift: float = 0.05):
    """A small change of viewpoint: a turn by up to `turn` degrees and a shift by up to `shift` of the side, the
    frame filled by reflection (no black corners a model could learn as 'normal'); the mask follows (nearest)."""
    from PIL import Image

    h, w = image.shape[:2]
    pad = int(np.ceil(max(h, w) * (shift + np.sin(np.deg2rad(turn))))) + 2
    angle = float(rng.uniform(-turn, turn))
    dy, dx = (float(v) for v in rng.uniform(-shift, shift, 2) * (h, w))

    def move(a, resample):
        big = Image.fromarray(np.pad(a, ((pad, pad), (pad, pad)) + ((0, 0),) * (a.ndim - 2), mode="reflect"))
        big = np.asarray(big.rotate(angle, resample=resample, translate=(dx, dy)))
        return np.ascontiguousarray(big[pad:pad + h, pad:pad + w])

    return move(image, Image.BILINEAR), move(mask.astype(np.uint8) * 255, Image.NEAREST) > 127


def _photometric(image: np.ndarray, rng: np.random.Generator, strong: bool) -> np.ndarray:
    """Gain and offset (slight, or with `strong` a lighting change: gain, offset and gamma)."""
    f = image.astype(np.float32)
    if strong:
        f = 255.0 * (f / 255.0) ** rng.uniform(0.8, 1.25)
        gain, offset = rng.uniform(0.85, 1.15), rng.uniform(-15, 15)
    else:
        gain, offset = rng.uniform(0.93, 1.07), rng.uniform(-6, 6)
    return np.clip(f * gain + offset + 0.5, 0, 255).astype(np.uint8)


class SampleBuilder:
    """Draws training samples from a PartData: half good images, half with a defect (a real one from the training
    defects when there are some, for half of them; else one drawn by `kinds` of training/anomalies.py). Every image
    gets a slight change of gain and offset; `augment` adds flips and quarter turns (for textures and parts without
    an orientation: on an oriented part a turned good image is a defect), a small change of viewpoint (a turn of a
    few degrees and a shift, _viewpoint) on half the images and a stronger change of lighting (gain, offset, gamma),
    so a good image seen slightly otherwise is not taken for a defect. Drawn defects come after these changes."""

    def __init__(self, data: PartData, kinds=tuple(GENERATORS), p_defect: float = 0.5, augment: bool = False):
        if not data.train_good:
            raise DataError("no good image to train on")
        self.data, self.kinds, self.p_defect, self.augment = data, tuple(kinds), p_defect, augment

    def draw(self, rng: np.random.Generator) -> Labeled:
        d = self.data
        defect = rng.random() < self.p_defect
        real = defect and bool(d.train_defects) and rng.random() < 0.5
        base = d.train_defects if real else d.train_good
        item = base[int(rng.integers(len(base)))]
        image, mask = item.image, item.mask
        if self.augment:
            image, mask = _geometry(image, mask, int(rng.integers(8)))
            if rng.random() < 0.5:
                image, mask = _viewpoint(image, mask, rng)
        image = _photometric(image, rng, self.augment)
        if real:
            return Labeled(image, mask, item.defect, item.source, item.original)
        if defect:
            image, mask, label = synthesize(image, rng, self.kinds)
            return Labeled(image, mask, label, "synthesized", item.original)
        return Labeled(image, mask, None, item.source, item.original)

    def held_out(self, seed: int = 1) -> list[Labeled]:
        """The evaluation frames: every held-out good image, the same image with one drawn defect (fixed by seed),
        and every held-out real defect."""
        rng = np.random.default_rng([seed, 17])
        out = list(self.data.held_good)
        for item in self.data.held_good:
            image, mask, label = synthesize(item.image, rng, self.kinds)
            out.append(Labeled(image, mask, label, "synthesized", item.original))
        return out + list(self.data.held_defects)
