"""The reference model's data: disjoint seed ranges of omniad_edge.synth for training, validation and test.

Owned here, not by the runtime, so nothing the demo or the benchmarks do can change what the model was trained or
tested on. omniad_edge.synth.FIRST_UNSEEN_SEED (where the demo and the benchmarks draw their frames) must stay at
or above every training and validation seed; tests/test_reference_model.py checks it.
"""
from __future__ import annotations

import numpy as np

from omniad_edge import synth
from omniad_edge.synth import SynthError

__all__ = ["SPLITS", "split_seed", "generate"]

# Disjoint seed ranges per split, so a test frame is never seen in training.
SPLITS = {"train": (0, 1_000_000), "val": (1_000_000, 1_100_000), "test": (2_000_000, 2_100_000)}


def split_seed(split: str, index: int) -> int:
    """The seed of the index-th frame of a split."""
    if split not in SPLITS:
        raise SynthError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    lo, hi = SPLITS[split]
    if not isinstance(index, (int, np.integer)) or not 0 <= index < hi - lo:
        raise SynthError(f"index must be an int in [0, {hi - lo}), got {index!r}")
    return lo + int(index)


def generate(split: str, n: int, start: int = 0, **kwargs):
    """Yield n samples of a split, from its start-th frame on (kwargs go to synth.make_sample)."""
    for i in range(start, start + n):
        yield synth.make_sample(split_seed(split, i), **kwargs)
