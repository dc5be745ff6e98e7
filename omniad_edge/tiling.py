"""Opt-in tiling for frames far above the bundle's max pixels: `Inspector(..., tiles=...)` or `run(frame, tiles=...)`.

A frame larger than the bundle's pixel budget is shrunk before the vision encoder (the embedded bundle: 896x896 ->
224x224), so a defect a few pixels wide falls below one patch. Tiling cuts the frame into overlapping tiles, inspects
them in one batch (run_batch), and merges:
- mask and boxes in frame coordinates: each tile's label grid upsampled into its rectangle (where tiles overlap, the
  higher label wins), boxes the connected components of that label image (a defect across a tile seam is one box);
- verdict: any tile anomalous; score: the maximum tile score (so `score >= 0.5` is still the verdict);
  anomaly_probability: the maximum tile probability; defect type: the most frequent defect label in the
  merged mask; explanation, answer and text: those of the highest-scoring tile;
- timings: per stage the sum over tiles, total the wall time; `options["tiling"]` holds the grid, the overlap and
  each tile's rectangle, verdict and score.

tiles: (rows, cols), an int n for (n, n), or "auto": the fewest tiles whose side fits the bundle's max pixels
(sqrt(max_pixels)) with the given overlap (1 tile, i.e. no tiling, when the frame already fits). overlap: share of a
tile's side shared with its neighbour, in [0, 0.5). Cost: one decode row per tile (a 5x5 grid on 896x896 with the
embedded bundle costs ~25 frames' work; benchmarks/results/tiling.txt).
"""
from __future__ import annotations

import math
import time

import numpy as np

from .inspection import UNKNOWN_DEFECT, Box, Inspection

__all__ = ["plan_tiles", "resolve_tiles", "merge"]


def resolve_tiles(tiles, height: int, width: int, max_pixels: int, overlap: float) -> tuple[int, int]:
    """tiles option -> (rows, cols) for this frame; raises ValueError naming the problem."""
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0 <= overlap < 0.5:
        raise ValueError(f"tile_overlap must be a number in [0, 0.5), got {overlap!r}")
    if tiles == "auto":
        side = math.isqrt(int(max_pixels))
        return tuple(max(1, math.ceil((n - side * overlap) / (side * (1 - overlap)))) for n in (height, width))
    if isinstance(tiles, (int, np.integer)) and not isinstance(tiles, bool):
        tiles = (int(tiles), int(tiles))
    if (not isinstance(tiles, (tuple, list)) or len(tiles) != 2
            or not all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) and 1 <= t <= 16 for t in tiles)):
        raise ValueError(f"tiles must be 'auto', an int or (rows, cols) with 1..16 each, got {tiles!r}")
    return int(tiles[0]), int(tiles[1])


def plan_tiles(height: int, width: int, rows: int, cols: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """Rectangles (x0, y0, x1, y1) covering the frame: rows x cols tiles of equal size, neighbours sharing about
    `overlap` of a side, the outer ones flush with the frame's edges."""
    def spans(n: int, k: int) -> list[tuple[int, int]]:
        size = min(n, math.ceil(n / (k - (k - 1) * overlap)))
        starts = [0] if k == 1 else [round(i * (n - size) / (k - 1)) for i in range(k)]
        return [(s, s + size) for s in starts]

    return [(x0, y0, x1, y1) for y0, y1 in spans(height, rows) for x0, x1 in spans(width, cols)]


def merge(inspector, frame_shape: tuple[int, int], rects, tiles: list[Inspection], overlap: float,
          t0: float) -> Inspection:
    """One frame's Inspection from its tiles' (see the module docstring)."""
    from . import tam

    t_post = time.perf_counter()
    h, w = frame_shape
    labels = np.zeros((h, w), np.uint8)
    mask = np.zeros((h, w), bool)
    for (x0, y0, x1, y1), tile in zip(rects, tiles):
        np.maximum(labels[y0:y1, x0:x1], tam.grid_to_labels(tile.grid, (y1 - y0, x1 - x0)),
                   out=labels[y0:y1, x0:x1])
        mask[y0:y1, x0:x1] |= tile.mask
    names = inspector.labels
    boxes = [Box(*c.box, names[c.label] if c.label < len(names) else str(c.label), c.area)
             for c in tam.components(labels)]
    defect_type = None
    if labels.any():
        counts = np.bincount(labels.ravel(), minlength=2)
        counts[0] = 0
        top = int(np.argmax(counts))
        defect_type = names[top] if top < len(names) else str(top)
    best = max(range(len(tiles)), key=lambda i: tiles[i].score)
    lead = tiles[best]
    stages = ("preprocess", "vision", "prefill", "decode", "postprocess") + (
        ("refine",) if "refine" in lead.timings else ())
    timings = {stage: sum(t.timings.get(stage, 0.0) for t in tiles) for stage in stages}
    timings["postprocess"] += (time.perf_counter() - t_post) * 1e3
    timings["total"] = (time.perf_counter() - t0) * 1e3
    is_anomalous = any(t.is_anomalous for t in tiles)
    if is_anomalous and defect_type is None:  # the rule of Inspection.defect_type: anomalous tiles, empty masks
        defect_type = UNKNOWN_DEFECT
    options = dict(lead.options)
    options["tiling"] = {"grid": [len({r[1] for r in rects}), len({r[0] for r in rects})], "overlap": overlap,
                         "tiles": [{"box": list(r), "is_anomalous": bool(t.is_anomalous), "score": float(t.score)}
                                   for r, t in zip(rects, tiles)]}
    return Inspection(
        is_anomalous=is_anomalous, score=float(lead.score), mask=mask, boxes=boxes,
        anomaly_probability=max((t.anomaly_probability for t in tiles if t.anomaly_probability is not None),
                                default=None), mask_refined=any(t.mask_refined for t in tiles),
        defect_type=defect_type, explanation=lead.explanation, answer=lead.answer,
        text=lead.text, grid=tam.mask_to_grid(labels, inspector.codec.grid),
        mask_repaired=any(t.mask_repaired for t in tiles), prompt_tokens=sum(t.prompt_tokens for t in tiles),
        generated_tokens=sum(t.generated_tokens for t in tiles),
        decode_forwards=sum(t.decode_forwards for t in tiles), finish_reason=lead.finish_reason, timings=timings,
        provider=lead.provider, options=options)
