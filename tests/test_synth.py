"""omniad_edge.synth: reproducible by seed, masks exactly for anomalous frames, defects change the masked pixels,
the part mask, and frames pinned so that the stable API stays stable."""
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
    for sample in map(synth.make_sample, range(120)):
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
    samples = [synth.make_sample(seed) for seed in range(1_000_000, 1_000_400)]
    assert {s.surface for s in samples} == set(synth.SURFACES)
    assert {s.defect for s in samples if s.anomalous} == set(synth.DEFECTS)


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


def test_training_splits_are_not_part_of_the_runtime():
    for name in ("SPLITS", "split_seed", "generate"):
        with pytest.raises(AttributeError, match="training/splits.py"):
            getattr(synth, name)


def test_defects_are_visible_across_many_seeds():
    # a defect the eye cannot see would be label noise: almost all must change their pixels clearly
    visible = 0
    for i in range(80):
        seed = 1_000_000 + i
        bad, good = synth.make_sample(seed, anomalous=True), synth.make_sample(seed, anomalous=False)
        diff = np.abs(bad.image.astype(np.int16) - good.image.astype(np.int16)).max(axis=2)
        visible += np.median(diff[bad.mask]) >= 15
    assert visible >= 78


@pytest.mark.parametrize("surface", synth.SURFACES)
def test_part_mask_is_the_object_or_the_whole_texture(surface):
    contrast = []
    for seed in range(20):
        s = synth.make_sample(seed, surface=surface, anomalous=False, size=(120, 160))
        assert s.part.shape == (120, 160) and s.part.dtype == bool
        # the part is drawn from its own random stream: the defect does not move it
        assert np.array_equal(synth.make_sample(seed, surface=surface, anomalous=True, size=(120, 160)).part, s.part)
        if surface not in synth.OBJECTS:
            assert s.part.all()
            continue
        assert 0.05 < s.part.mean() < 0.8  # an object on a background
        inside = s.image[s.part].astype(np.float32).mean(axis=0)
        outside = s.image[~s.part].astype(np.float32).mean(axis=0)
        contrast.append(np.abs(inside - outside).max())
    if contrast:  # the silhouette separates what the frame shows (a part may match its background by chance)
        assert np.median(contrast) > 15


def test_defects_lie_on_the_part():
    for seed in range(40):
        s = synth.make_sample(seed, surface=synth.OBJECTS[seed % 3], anomalous=True)
        assert (s.mask & ~s.part).sum() == 0, s.meta()


# Recorded from the frames the embedded reference model was trained and tested on: (seed, surface, defect, bbox,
# mean pixel value). A failure here means the drawing changed, which changes the reference model's data: a breaking
# change of a public API, not a refactoring. Small tolerances absorb Pillow's resampling across versions.
PINNED = [
    (0, "bolt", "contamination", (95, 179, 120, 200), 146.03),
    (1, "wood", None, None, 110.212),
    (2_000_000, "metal", "crack", (113, 28, 135, 46), 98.815),
    (2_000_001, "pcb", "contamination", (19, 9, 48, 39), 97.658),
    (2_000_002, "fabric", None, None, 104.238),
]


@pytest.mark.parametrize("seed, surface, defect, bbox, mean", PINNED)
def test_frames_are_stable(seed, surface, defect, bbox, mean):
    s = synth.make_sample(seed)
    assert (s.surface, s.defect) == (surface, defect)
    if bbox is None:
        assert s.bbox is None
    else:
        assert np.abs(np.subtract(s.bbox, bbox)).max() <= 2
    assert float(s.image.mean()) == pytest.approx(mean, abs=0.5)


def test_paint_defect_draws_a_painter_onto_any_image():
    image = np.full((96, 128, 3), 140, np.uint8)
    for defect in synth.DEFECTS:
        out, mask = synth.paint_defect(image, defect, seed=5)
        again, mask_again = synth.paint_defect(image, defect, seed=5)
        assert np.array_equal(out, again) and np.array_equal(mask, mask_again)  # stable by seed
        changed = np.abs(out.astype(int) - 140).max(axis=2) > 8
        assert mask.shape == (96, 128) and mask.any() and (changed & mask).sum() >= 0.5 * mask.sum(), defect
    part = np.zeros((96, 128), bool)
    part[:, :40] = True
    _, mask = synth.paint_defect(image, "stain", seed=1, part=part)
    assert not mask[:, 40:].any()
    for bad in ({"defect": "dent"}, {"image": image[..., 0]}, {"part": np.zeros((96, 128), bool)}):
        kwargs = {"image": image, "defect": "hole", "seed": 0, **bad}
        with pytest.raises(synth.SynthError):
            synth.paint_defect(**kwargs)
