"""Deterministic test frames: smooth gradients plus a little noise (so resizing matters), fixed seeds."""
from __future__ import annotations

import numpy as np


def make_frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / max(width - 1, 1), y / max(height - 1, 1), (x + y) / max(height + width - 2, 1)], -1)
    frame = 200 * base + rng.normal(0, 20, (height, width, 3)) + 20
    return np.clip(frame, 0, 255).astype(np.uint8)
