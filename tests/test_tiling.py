"""Tiling of large frames: the tile plan, the merge into frame coordinates, and Inspector.run(tiles=...)
(omniad_edge.tiling)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from helpers.frames import make_frame
from omniad_edge.inspection import Inspection
from omniad_edge.tiling import merge, plan_tiles, resolve_tiles

pytest.importorskip("omniad_edge._native", reason="the native sampler/codec module is not built "
                    "(python setup.py build_ext --inplace)")


@pytest.mark.parametrize("h,w,rows,cols,overlap", [(896, 896, 5, 5, 0.125), (1080, 1920, 3, 4, 0.2),
                                                   (100, 90, 2, 3, 0.25), (64, 64, 1, 1, 0.1), (97, 331, 4, 7, 0.0)])
def test_plan_covers_the_frame_with_equal_overlapping_tiles(h, w, rows, cols, overlap):
    rects = plan_tiles(h, w, rows, cols, overlap)
    assert len(rects) == rows * cols
    assert len({(x1 - x0, y1 - y0) for x0, y0, x1, y1 in rects}) == 1  # one tile size: one batch shape
    covered = np.zeros((h, w), int)
    for x0, y0, x1, y1 in rects:
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1
    tw, th = rects[0][2] - rects[0][0], rects[0][3] - rects[0][1]
    if cols > 1:  # neighbours share at least about `overlap` of a side
        assert rects[0][2] - rects[1][0] >= int(overlap * tw) - 1
    if rows > 1:
        assert rects[0][3] - rects[cols][1] >= int(overlap * th) - 1


def test_resolve_tiles():
    assert resolve_tiles("auto", 224, 224, 224 * 224, 0.125) == (1, 1)  # fits: no tiling
    assert resolve_tiles("auto", 896, 896, 224 * 224, 0.125) == (5, 5)
    assert resolve_tiles(3, 10, 10, 100, 0.1) == (3, 3) and resolve_tiles((2, 4), 10, 10, 100, 0.1) == (2, 4)
    for bad in (0, (1,), (2, 0), "many", 2.5, True, (17, 1)):
        with pytest.raises(ValueError, match="tiles"):
            resolve_tiles(bad, 10, 10, 100, 0.1)
    with pytest.raises(ValueError, match="tile_overlap"):
        resolve_tiles(2, 10, 10, 100, 0.5)


def _tile(grid, score, anomalous, size, text=""):
    from omniad_edge import tam

    grid = np.asarray(grid, np.uint8)
    return Inspection(is_anomalous=anomalous, score=score, mask=tam.grid_to_mask(grid, size), grid=grid,
                      text=text, timings={"vision": 1.0, "decode": 2.0}, prompt_tokens=10, generated_tokens=3,
                      provider="cpu", options={"mode": "detect"})


def test_merge_places_tiles_in_frame_coordinates_and_joins_a_defect_across_the_seam():
    owner = SimpleNamespace(labels=["others", "scratch", "dent"], codec=SimpleNamespace(grid=4))
    rects = [(0, 0, 40, 40), (30, 0, 70, 40)]  # two tiles side by side, 10 px shared
    left = np.zeros((4, 4), np.uint8)
    left[1, 3] = 1  # tile pixels x 30..40, y 10..20 -> frame x 30..40
    right = np.zeros((4, 4), np.uint8)
    right[1, 0] = 1  # tile pixels x 0..10 -> frame x 30..40 too
    right[1, 1] = 1  # frame x 40..50: the same defect continues across the seam
    right[3, 3] = 2  # a dent at frame x 60..70, y 30..40
    tiles = [_tile(left, 0.7, True, (40, 40), "left"), _tile(right, 0.9, True, (40, 40), "right")]
    out = merge(owner, (40, 70), rects, tiles, 0.25, 0.0)
    assert out.is_anomalous and out.score == 0.9 and out.text == "right"
    want = np.zeros((40, 70), bool)
    want[10:20, 30:50] = True
    want[30:40, 60:70] = True
    np.testing.assert_array_equal(out.mask, want)
    assert sorted((b.x0, b.y0, b.x1, b.y1, b.label) for b in out.boxes) == [(30, 10, 50, 20, "scratch"),
                                                                           (60, 30, 70, 40, "dent")]
    assert out.defect_type == "scratch"  # 200 scratch pixels against 100 dent pixels
    assert out.timings["vision"] == 2.0 and out.prompt_tokens == 20 and out.grid.shape == (4, 4)
    assert out.options["tiling"]["grid"] == [1, 2] and len(out.options["tiling"]["tiles"]) == 2


def test_merge_of_normal_tiles_is_normal():
    owner = SimpleNamespace(labels=["others", "scratch"], codec=SimpleNamespace(grid=4))
    tiles = [_tile(np.zeros((4, 4)), s, False, (20, 20)) for s in (0.1, 0.3)]
    out = merge(owner, (20, 36), [(0, 0, 20, 20), (16, 0, 36, 20)], tiles, 0.2, 0.0)
    assert not out.is_anomalous and out.score == 0.3 and not out.mask.any() and out.boxes == []
    assert out.defect_type is None


def test_run_with_tiles_merges_what_each_tile_gives_alone(tiny_bundle):
    from omniad_edge import Inspector

    frame = make_frame(150, 210, seed=12)
    ins = Inspector(tiny_bundle, mode="detect", threads=1, max_new_tokens=24)
    tiled = ins.run(frame, tiles=(2, 3))
    rects = plan_tiles(150, 210, 2, 3, ins.tile_overlap)
    alone = [ins.run(np.ascontiguousarray(frame[y0:y1, x0:x1])) for x0, y0, x1, y1 in rects]
    assert tiled.is_anomalous == any(t.is_anomalous for t in alone)
    assert tiled.score == pytest.approx(max(t.score for t in alone), abs=1e-5)
    want = np.zeros(frame.shape[:2], bool)
    for (x0, y0, x1, y1), t in zip(rects, alone):
        want[y0:y1, x0:x1] |= t.mask
    np.testing.assert_array_equal(tiled.mask, want)
    assert [t["box"] for t in tiled.options["tiling"]["tiles"]] == [list(r) for r in rects]
    # the Inspector-wide setting, and the per-call override back to the whole frame
    ins_tiled = Inspector(tiny_bundle, mode="detect", threads=1, max_new_tokens=24, tiles=(2, 3))
    assert ins_tiled.run(frame).score == tiled.score
    assert "tiling" not in ins_tiled.run(frame, tiles=None).options


def test_bad_tiling_options_are_typed(tiny_bundle):
    from omniad_edge import Inspector
    from omniad_edge.inspector import InspectorError

    with pytest.raises(InspectorError, match="tiles"):
        Inspector(tiny_bundle, tiles=(0, 2))
    with pytest.raises(InspectorError, match="tile_overlap"):
        Inspector(tiny_bundle, tiles="auto", tile_overlap=0.7)
    ins = Inspector(tiny_bundle, mode="detect", threads=1, max_new_tokens=8)
    with pytest.raises(InspectorError, match="tiles"):
        ins.run(make_frame(64, 64), tiles="lots")
    assert ins.run(make_frame(64, 64)).finish_reason  # still usable
