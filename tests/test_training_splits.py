"""training/splits.py: the reference model's train/val/test seed ranges, disjoint, and apart from the runtime's."""
import pytest

from omniad_edge import synth
from training import splits


def test_split_seed_ranges_are_disjoint():
    ranges = sorted(splits.SPLITS.values())
    assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:]))
    assert splits.split_seed("test", 0) == splits.SPLITS["test"][0]
    assert splits.split_seed("val", 7) == splits.SPLITS["val"][0] + 7


def test_runtime_frames_are_unseen_by_training():
    # the demo and the benchmarks draw from synth.FIRST_UNSEEN_SEED on
    for split in ("train", "val"):
        assert splits.SPLITS[split][1] <= synth.FIRST_UNSEEN_SEED
    assert splits.SPLITS["test"][0] == synth.FIRST_UNSEEN_SEED  # the demo shows test frames


def test_generate_draws_the_split_seeds_in_order():
    samples = list(splits.generate("val", 3, start=5, size=64))
    assert [s.seed for s in samples] == [splits.split_seed("val", i) for i in (5, 6, 7)]
    assert samples[0].image.shape == (64, 64, 3)


def test_bad_split_and_index():
    with pytest.raises(synth.SynthError, match="split"):
        splits.split_seed("holdout", 0)
    with pytest.raises(synth.SynthError, match="index"):
        splits.split_seed("test", 10**9)
