"""A user's own images: a plain folder of good parts, or a data set in the MVTec AD layout, read and checked.

    root/train/good/*.png                 good parts
    root/test/good/*.png                  more good parts
    root/test/<type>/*.png                defects of one type
    root/ground_truth/<type>/<stem>_mask.png   their masks (white = defect), same size as the image

Images are shrunk to the reference model's pixel budget (training/spec.py PREPROCESS: the runtime's resize does the
same at inference) so a data set of 1024 px frames fits in memory. Anything that cannot be used raises DataError
naming the file and the problem: a folder without images, an unreadable file, images of several sizes, a missing
or empty mask or one of another size than its image (defects without any good image: training/samples.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from omniad_edge.errors import DataError

from .spec import PREPROCESS

__all__ = ["Labeled", "MVTecSet", "IMAGE_EXTENSIONS", "image_files", "read_good", "read_mvtec", "label_name"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class Labeled:
    """One image with its truth: `mask` all False and `defect` None for a good part."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    mask: np.ndarray  # (H, W) bool
    defect: str | None
    source: str  # file path, or the generator that drew the defect
    original: tuple[int, int] = (0, 0)  # (width, height) of the file, before shrinking

    @property
    def anomalous(self) -> bool:
        return self.defect is not None


@dataclass
class MVTecSet:
    good: list[Labeled]
    defects: list[Labeled]
    types: list[str] = field(default_factory=list)  # label names of the defect folders, in folder order


def image_files(folder: str | Path) -> list[Path]:
    """The image files directly in `folder`, sorted; DataError when there is none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        hint = (f"; it looks like an MVTec AD folder: give {folder / 'train' / 'good'} and --defects {folder}"
                if (folder / "train" / "good").is_dir() else "")
        raise DataError(f"{folder}: no images (looked for {', '.join(IMAGE_EXTENSIONS)}){hint}")
    return files


def _fit(size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) within the model's pixel budget, aspect kept; smaller images stay as they are."""
    w, h = size
    budget = int(PREPROCESS["max_pixels"])
    if w * h <= budget:
        return w, h
    s = (budget / (w * h)) ** 0.5
    return max(32, int(w * s)), max(32, int(h * s))


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
        img.load()
        return img
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"{path}: unreadable image ({exc.__class__.__name__}: {exc})") from None


def _read(path: Path, expect: tuple[int, int] | None) -> tuple[np.ndarray, tuple[int, int]]:
    from PIL import Image

    img = _open(path)
    size = img.size
    if expect is not None and size != expect:
        raise DataError(f"{path}: {size[0]}x{size[1]} pixels, but the other images are {expect[0]}x{expect[1]}; "
                        "use one camera setting (crop or resize the images to one size)")
    if img.mode in ("I;16", "I;16B", "I", "F"):  # 16-bit and float grey: scale to 8 bit
        a = np.asarray(img, np.float64)
        a = (a - a.min()) / max(1e-9, a.max() - a.min()) * 255.0
        img = Image.fromarray(a.astype(np.uint8))
    rgb = img.convert("RGB").resize(_fit(size), Image.BICUBIC)
    return np.asarray(rgb, np.uint8), size


def _read_mask(path: Path, image_path: Path, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    img = _open(path)
    if img.size != size:
        raise DataError(f"{path}: mask is {img.size[0]}x{img.size[1]}, its image {image_path.name} is "
                        f"{size[0]}x{size[1]}")
    m = img.convert("L").resize(_fit(size), Image.BOX)
    mask = np.asarray(m) >= 128
    if not mask.any():
        raise DataError(f"{path}: empty mask (no white pixel) for the defect image {image_path}")
    return mask


def read_good(folder: str | Path, size: tuple[int, int] | None = None) -> list[Labeled]:
    """Every image of a folder of good parts (one size; `size` (w, h) to match other images)."""
    out = []
    for path in image_files(folder):
        image, size = _read(path, size)
        out.append(Labeled(image, np.zeros(image.shape[:2], bool), None, str(path), size))
    return out


def label_name(folder_name: str) -> str:
    """A defect folder name as a mask label the compact codec accepts (3+ of [A-Za-z0-9_-], starting with a
    letter, never 'none')."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", folder_name.strip()).strip("_-") or "defect"
    if not name[0].isalpha():
        name = "d_" + name
    if len(name) < 3 or name.lower() == "none":
        name = "defect_" + name
    return name


def read_mvtec(root: str | Path, size: tuple[int, int] | None = None) -> MVTecSet:
    """train/good, test/good and test/<type> with ground_truth/<type>/<stem>_mask.png (one size; `size` (w, h) to
    match other images)."""
    root = Path(root)
    if not (root / "train").is_dir() and not (root / "test").is_dir():
        raise DataError(f"{root}: not an MVTec AD layout (no train/ or test/ folder)")
    good: list[Labeled] = []
    for folder in (root / "train" / "good", root / "test" / "good"):
        if folder.is_dir() and any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir()):
            for path in image_files(folder):
                image, size = _read(path, size)
                good.append(Labeled(image, np.zeros(image.shape[:2], bool), None, str(path), size))
    defects: list[Labeled] = []
    types: list[str] = []
    test = root / "test"
    for folder in sorted(p for p in test.iterdir() if p.is_dir() and p.name != "good") if test.is_dir() else []:
        label = label_name(folder.name)
        if label in types:
            raise DataError(f"{folder}: defect type {folder.name!r} reads as {label!r}, like another folder")
        types.append(label)
        for path in image_files(folder):
            image, size = _read(path, size)
            mask_path = root / "ground_truth" / folder.name / f"{path.stem}_mask.png"
            if not mask_path.is_file():
                raise DataError(f"{path}: no mask at {mask_path}")
            defects.append(Labeled(image, _read_mask(mask_path, path, size), label, str(path), size))
    if not good and not defects:
        raise DataError(f"{root}: no images in train/good, test/good or test/<type>")
    return MVTecSet(good, defects, types)
