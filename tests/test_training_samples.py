"""training/samples.py: a user's data split into training and held-out images, samples drawn from them, and their
targets in the bundle's output format."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omniad_edge import tam
from omniad_edge.contract import output_blocks
from omniad_edge.errors import DataError
from training import spec as S
from training.samples import SampleBuilder, _viewpoint, grid, load_part, part_spec, target
from training.userdata import Labeled

from test_training_userdata import _noise, write_mvtec


def _good_folder(path: Path, n: int, size=(64, 48)) -> Path:
    path.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(_noise(50 + i, size)).save(path / f"g{i}.png")
    return path


def test_split_is_disjoint_by_seed_and_keeps_defect_types(tmp_path):
    root = write_mvtec(tmp_path / "part", good=4, test_good=1, per_type=3)
    data = load_part(root / "train" / "good", root)  # the set's own train/good as NORMAL_DIR: no duplicates
    good = data.train_good + data.held_good
    assert len(good) == 5 and len({g.source for g in good}) == 5
    assert len(data.held_good) == 1 and len(data.train_defects) + len(data.held_defects) == 6
    assert {d.defect for d in data.held_defects} == {"crack", "color_2"}  # one of each type held out
    assert not {g.source for g in data.train_good} & {g.source for g in data.held_good}
    again = load_part(root / "train" / "good", root)
    assert [g.source for g in again.held_good] == [g.source for g in data.held_good]
    assert data.labels == ["color_2", "crack", "anomaly"]


def test_only_defects_or_a_single_good_image_is_refused(tmp_path):
    root = write_mvtec(tmp_path / "part", good=0, test_good=0)
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(DataError, match="only defect images"):
        load_part(empty, root)
    with pytest.raises(DataError, match="at least 2"):
        load_part(_good_folder(tmp_path / "one", 1))


def test_targets_are_the_codec_text_explanation_and_answer(tmp_path):
    root = write_mvtec(tmp_path / "part")
    data = load_part(root / "train" / "good", root)
    spec = part_spec(S.load_spec(), data.labels)
    labels = spec["output"]["mask"]["labels"]
    assert labels[-2:] == ["color_2", "anomaly"] and labels.count("crack") == 1  # a known type keeps its place
    assert S.load_spec()["output"]["mask"]["labels"][-1] == "misprint"  # the reference spec is left alone
    item = (data.train_defects + data.held_defects)[0]
    text = target(spec, item)
    blocks = output_blocks(text, spec["output"]["tags"])
    g = np.asarray(S.codec(spec).decode(blocks["mask"]).grid).reshape(16, 16)
    assert np.array_equal(g, grid(spec, item)) and (g == spec["output"]["mask"]["labels"].index(item.defect)).any()
    # the mask's cells: what the coverage rule gives on the pixel mask
    assert np.array_equal(g != 0, np.asarray(tam.mask_to_grid(item.mask, 16, 0.02), bool))
    assert blocks["answer"] == "yes" and item.defect.capitalize() in blocks["explanation"]
    good = Labeled(item.image, np.zeros(item.mask.shape, bool), None, "x")
    assert target(spec, good) == "<seg>none</seg><think>No defect is visible.</think><answer>no</answer>"


def test_builder_draws_good_real_and_drawn_defects_and_a_fixed_held_out_set(tmp_path):
    root = write_mvtec(tmp_path / "part", good=4, per_type=3)
    data = load_part(root / "train" / "good", root)
    builder = SampleBuilder(data, augment=True)
    rng = np.random.default_rng(0)
    drawn = [builder.draw(rng) for _ in range(60)]
    kinds = {"good" if not d.anomalous else ("drawn" if d.source == "synthesized" else "real") for d in drawn}
    assert kinds == {"good", "drawn", "real"}
    for d in drawn:
        assert d.image.shape[:2] == d.mask.shape and d.anomalous == bool(d.mask.any())
    held = builder.held_out()
    assert len(held) == 2 * len(data.held_good) + len(data.held_defects)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(held, builder.held_out()))
    with pytest.raises(DataError):
        load_part(root / "train" / "good", root, held_out=1.5)


def test_viewpoint_moves_the_mask_with_the_image_and_fills_the_frame():
    image = np.full((96, 80, 3), 40, np.uint8)
    image[30:50, 20:44] = 220  # a bright defect, its mask exactly over it
    mask = image[..., 0] > 128
    moved = 0
    for seed in range(6):
        out, m = _viewpoint(image, mask, np.random.default_rng(seed))
        assert out.shape == image.shape and m.shape == mask.shape and m.dtype == bool
        bright = out[..., 0] > 128
        assert (bright ^ m).sum() <= 0.1 * mask.sum()  # the mask follows the pixels, up to the resampled rim
        assert out.min() >= 40  # filled by reflection: no black corners
        moved += not np.array_equal(m, mask)
    assert moved >= 5
