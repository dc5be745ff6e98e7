"""training/anomalies.py: defects drawn onto any image, each with a mask that covers what changed."""
from __future__ import annotations

import numpy as np
import pytest

from omniad_edge import synth
from training import anomalies as A
from training.anomalies import ANOMALY_LABEL, GENERATORS, synthesize


def _texture(grey: bool) -> np.ndarray:
    rng = np.random.default_rng(3)
    base = np.kron(rng.integers(40, 200, (14, 14)), np.ones((16, 16))).astype(np.uint8)  # 224 px, blocky
    rgb = np.stack([base, base, base], axis=2)
    if not grey:
        rgb[..., 0] = np.clip(rgb[..., 0].astype(int) + 30, 0, 255)
    return rgb


@pytest.mark.parametrize("kind", sorted(GENERATORS))
@pytest.mark.parametrize("grey", [True, False])
def test_each_generator_changes_the_image_where_its_mask_says(kind, grey):
    image = _texture(grey)
    for seed in range(4):
        out, mask, label = synthesize(image, np.random.default_rng(seed), (kind,))
        assert out.shape == image.shape and out.dtype == np.uint8 and mask.shape == image.shape[:2]
        changed = np.abs(out.astype(int) - image.astype(int)).max(axis=2) > 8
        assert (changed & mask).sum() >= 0.3 * mask.sum() > 0
        assert (changed & ~mask).sum() <= 0.5 * mask.sum()  # soft edges (a blurred stain) only outside the mask
        if kind in ("painted", "cutpaste", "texture"):  # resample/frequency may fall back to painted
            assert (label == ANOMALY_LABEL) == (kind != "painted")
        else:
            assert label == ANOMALY_LABEL or label in synth.DEFECTS
        if grey:
            assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_generators_follow_the_seed():
    image = _texture(True)
    a = synthesize(image, np.random.default_rng(7))
    b = synthesize(image, np.random.default_rng(7))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def _fine_texture() -> np.ndarray:
    """A grey texture with detail at every scale (a 1-pixel grain on smooth blotches), as a photograph has."""
    rng = np.random.default_rng(5)
    blotches = np.kron(rng.uniform(60, 190, (28, 28)), np.ones((8, 8)))
    grey = np.clip(blotches + rng.normal(0, 25, blotches.shape), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


@pytest.mark.parametrize("kind", ["resample", "frequency"])
def test_new_generators_change_their_mask_visibly_and_nothing_far_from_it(kind):
    image = _fine_texture()
    drawn = 0
    for seed in range(12):
        out, mask, label = GENERATORS[kind](image, np.random.default_rng(seed))
        if label != ANOMALY_LABEL:
            continue
        drawn += 1
        change = np.abs(out.astype(int) - image.astype(int)).max(axis=2)
        assert change[mask].mean() >= A.MIN_MEAN_CHANGE
        near = A._fade(mask, 15) > 0  # the soft rim reaches a few pixels out, no further
        assert not change[~near].any()
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert drawn >= 10  # on a textured image the fallback is the exception


def test_resample_moves_pixels_and_keeps_the_grey_levels():
    image = _fine_texture()
    out, mask, label = A.resample(image, np.random.default_rng(1))
    assert label == ANOMALY_LABEL
    inside, before = out[..., 0][mask].astype(float), image[..., 0][mask].astype(float)
    assert np.abs(inside - before).mean() > 10  # the region changed...
    assert abs(inside.mean() - before.mean()) < 0.5 * np.abs(inside - before).mean()  # ...not as a brightness change


@pytest.mark.parametrize("kind", ["resample", "frequency"])
def test_new_generators_fall_back_to_painted_on_a_flat_image(kind):
    flat = np.full((224, 224, 3), 120, np.uint8)  # moving or filtering a flat region changes nothing
    for seed in range(3):
        out, mask, label = GENERATORS[kind](flat, np.random.default_rng(seed))
        assert label in synth.DEFECTS and mask.any()
        assert np.abs(out.astype(int) - flat.astype(int)).max(axis=2)[mask].mean() > 8
