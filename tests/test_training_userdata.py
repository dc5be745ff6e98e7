"""training/userdata.py: a folder of good images and the MVTec AD layout read into Labeled images; bad data sets
refused with a DataError naming the file and the problem."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omniad_edge.errors import DataError, OmniADError
from training.userdata import label_name, read_good, read_mvtec


def _noise(seed: int, size=(64, 48)) -> np.ndarray:
    w, h = size
    return np.random.default_rng(seed).integers(0, 255, (h, w), dtype=np.uint8)


def write_mvtec(root: Path, size=(64, 48), good=3, test_good=1, types=("crack", "color 2"), per_type=2) -> Path:
    """A small data set in the MVTec AD layout; masks are a rectangle per defect image."""
    w, h = size
    for i in range(good):
        (root / "train" / "good").mkdir(parents=True, exist_ok=True)
        Image.fromarray(_noise(i, size)).save(root / "train" / "good" / f"{i:03d}.png")
    for i in range(test_good):
        (root / "test" / "good").mkdir(parents=True, exist_ok=True)
        Image.fromarray(_noise(100 + i, size)).save(root / "test" / "good" / f"{i:03d}.png")
    for t, name in enumerate(types):
        (root / "test" / name).mkdir(parents=True, exist_ok=True)
        (root / "ground_truth" / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_type):
            Image.fromarray(_noise(200 + 10 * t + i, size)).save(root / "test" / name / f"{i:03d}.png")
            mask = np.zeros((h, w), np.uint8)
            mask[4 + i: 20 + i, 8:30] = 255
            Image.fromarray(mask).save(root / "ground_truth" / name / f"{i:03d}_mask.png")
    return root


def test_mvtec_layout_is_read_with_masks_and_label_names(tmp_path):
    root = write_mvtec(tmp_path / "part")
    data = read_mvtec(root)
    assert len(data.good) == 4 and len(data.defects) == 4
    assert data.types == ["color_2", "crack"]  # folder order; the space is no label character
    for item in data.defects:
        assert item.image.shape == (48, 64, 3) and item.image.dtype == np.uint8
        assert item.mask.shape == (48, 64) and item.mask.sum() == 16 * 22
        assert item.defect in data.types and item.anomalous
    assert all(not g.anomalous and not g.mask.any() for g in data.good)
    # the image itself, grey -> RGB
    first = [d for d in data.defects if d.defect == "color_2"][0]
    assert np.array_equal(first.image[..., 0], _noise(210, (64, 48)))  # "color 2" is the second type written


def test_large_images_are_shrunk_to_the_models_pixel_budget(tmp_path):
    folder = tmp_path / "good"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(_noise(i, (640, 480))).save(folder / f"{i}.png")
    items = read_good(folder)
    h, w = items[0].image.shape[:2]
    assert h * w <= 50176 and abs(w / h - 640 / 480) < 0.02 and items[0].original == (640, 480)


def test_label_names_fit_the_compact_codec():
    assert label_name("broken_large") == "broken_large"
    assert label_name("color 2") == "color_2"
    assert label_name("42") == "d_42"
    assert label_name("ok") == "defect_ok"
    assert label_name("none") == "defect_none"


@pytest.mark.parametrize("case", ["empty", "not_a_folder", "unreadable", "mixed_sizes"])
def test_bad_good_folders_raise_a_data_error_naming_the_problem(tmp_path, case):
    folder = tmp_path / "good"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image")
    if case == "not_a_folder":
        folder = tmp_path / "missing"
    if case in ("unreadable", "mixed_sizes"):
        Image.fromarray(_noise(0)).save(folder / "a.png")
    if case == "unreadable":
        (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    if case == "mixed_sizes":
        Image.fromarray(_noise(1, (80, 48))).save(folder / "b.png")
    with pytest.raises(DataError) as err:
        read_good(folder)
    assert isinstance(err.value, OmniADError) and isinstance(err.value, ValueError)
    expect = {"empty": "no images", "not_a_folder": "not a folder", "unreadable": "b.png: unreadable image",
              "mixed_sizes": "b.png: 80x48 pixels, but the other images are 64x48"}[case]
    assert expect in str(err.value)


def test_an_mvtec_folder_given_as_the_good_folder_gets_a_hint(tmp_path):
    root = write_mvtec(tmp_path / "part")
    with pytest.raises(DataError, match="looks like an MVTec AD folder"):
        read_good(root)


@pytest.mark.parametrize("case", ["missing_mask", "mask_size", "empty_mask", "mixed_sizes", "not_mvtec"])
def test_bad_mvtec_sets_raise_a_data_error_naming_the_file(tmp_path, case):
    root = write_mvtec(tmp_path / "part")
    mask = root / "ground_truth" / "crack" / "001_mask.png"
    if case == "missing_mask":
        mask.unlink()
        expect = "001.png: no mask at"
    elif case == "mask_size":
        Image.fromarray(np.full((24, 32), 255, np.uint8)).save(mask)
        expect = "mask is 32x24, its image 001.png is 64x48"
    elif case == "empty_mask":
        Image.fromarray(np.zeros((48, 64), np.uint8)).save(mask)
        expect = "empty mask"
    elif case == "mixed_sizes":
        Image.fromarray(_noise(5, (32, 32))).save(root / "test" / "crack" / "001.png")
        expect = "001.png: 32x32 pixels, but the other images are 64x48"
    else:
        root = tmp_path / "elsewhere"
        root.mkdir()
        expect = "not an MVTec AD layout"
    with pytest.raises(DataError) as err:
        read_mvtec(root)
    assert expect in str(err.value)
