"""training/anomalies.py: defects drawn onto any image, each with a mask that covers what changed."""
from __future__ import annotations

import numpy as np
import pytest

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
        assert (label == ANOMALY_LABEL) == (kind != "painted")
        if grey:
            assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_generators_follow_the_seed():
    image = _texture(True)
    a = synthesize(image, np.random.default_rng(7))
    b = synthesize(image, np.random.default_rng(7))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
