"""omniad_edge.synth: reproducible by seed, masks exactly for anomalous frames, defects change the masked pixels."""
import numpy as np
import pytest

from omniad_edge import synth
from omniad_edge.errors import OmniADError


def test_same_seed_same_frame_and_metadata():
    a = synth.make_sample(1234)
    b = synth.make_sample(1234)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert a.meta() == b.meta()


def test_different_seeds_differ():
    frames = [synth.make_sample(s).image for s in range(6)]
    for i in range(len(frames)):
        for j in range(i + 1, len(frames)):
            assert not np.array_equal(frames[i], frames[j])


def test_frame_format_and_size():
    s = synth.make_sample(7, size=(96, 160))
    assert s.image.shape == (96, 160, 3) and s.image.dtype == np.uint8
    assert s.mask.shape == (96, 160) and s.mask.dtype == bool


def test_mask_nonempty_exactly_for_anomalous_and_metadata_consistent():
    n_anomalous = 0
    for sample in synth.generate("train", 120):
        if sample.anomalous:
            n_anomalous += 1
            assert sample.mask.any(), sample.meta()
            assert sample.defect in synth.DEFECTS
            ys, xs = np.nonzero(sample.mask)
            assert sample.bbox == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert sample.area == pytest.approx(sample.mask.mean())
        else:
            assert not sample.mask.any() and sample.defect is None and sample.bbox is None and sample.area == 0
    assert 35 <= n_anomalous <= 85  # about half


@pytest.mark.parametrize("surface", synth.SURFACES)
@pytest.mark.parametrize("defect", synth.DEFECTS)
def test_defect_changes_pixels_where_the_mask_says(surface, defect):
    seed = 500 + synth.SURFACES.index(surface) * 31 + synth.DEFECTS.index(defect)
    bad = synth.make_sample(seed, surface=surface, defect=defect)
    good = synth.make_sample(seed, surface=surface, anomalous=False)
    assert bad.surface == good.surface == surface and bad.defect == defect and not good.anomalous
    diff = np.abs(bad.image.astype(np.int16) - good.image.astype(np.int16)).max(axis=2)
    # the masked pixels changed clearly; outside, only the faint soft edge of a stain or smear, then nothing
    assert np.median(diff[bad.mask]) >= 12, (surface, defect)
    assert diff[~_dilate(bad.mask, 8)].max() <= 4
    assert diff[~_dilate(bad.mask, 24)].max() == 0


def _dilate(mask, r):
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= np.roll(np.roll(mask, dy, 0), dx, 1)
    return out


def test_every_surface_and_defect_is_drawn_by_seed():
    samples = list(synth.generate("val", 400))
    assert {s.surface for s in samples} == set(synth.SURFACES)
    assert {s.defect for s in samples if s.anomalous} == set(synth.DEFECTS)


def test_split_seed_ranges_are_disjoint():
    ranges = sorted(synth.SPLITS.values())
    assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:]))
    assert synth.split_seed("test", 0) == synth.SPLITS["test"][0]


@pytest.mark.parametrize("kwargs, word", [
    ({"seed": -1}, "seed"),
    ({"seed": 1, "size": 8}, "size"),
    ({"seed": 1, "size": (64, 64, 3)}, "size"),
    ({"seed": 1, "surface": "glass"}, "surface"),
    ({"seed": 1, "defect": "dent"}, "defect"),
    ({"seed": 1, "defect": "hole", "anomalous": False}, "defect"),
])
def test_bad_arguments_raise_typed_errors(kwargs, word):
    with pytest.raises(synth.SynthError, match=word) as info:
        synth.make_sample(**kwargs)
    assert isinstance(info.value, OmniADError) and isinstance(info.value, ValueError)


def test_bad_split_and_index():
    with pytest.raises(synth.SynthError, match="split"):
        synth.split_seed("holdout", 0)
    with pytest.raises(synth.SynthError, match="index"):
        synth.split_seed("test", 10**9)


def test_defects_are_visible_across_many_seeds():
    # a defect the eye cannot see would be label noise: almost all must change their pixels clearly
    visible = 0
    for i in range(80):
        seed = synth.split_seed("val", i)
        bad, good = synth.make_sample(seed, anomalous=True), synth.make_sample(seed, anomalous=False)
        diff = np.abs(bad.image.astype(np.int16) - good.image.astype(np.int16)).max(axis=2)
        visible += np.median(diff[bad.mask]) >= 15
    assert visible >= 78
