"""Overlay: pure function of frame + Inspection."""
import numpy as np
import pytest
from PIL import Image

from omniad_edge.errors import FrameError
from omniad_edge.inspection import Box, Inspection
from omniad_edge.visualize import overlay, save_overlay


def _case():
    frame = np.full((60, 80, 3), 100, np.uint8)
    mask = np.zeros((60, 80), bool)
    mask[30:40, 40:60] = True
    inspection = Inspection(is_anomalous=True, score=0.9, mask=mask, boxes=[Box(40, 30, 60, 40, "crack", 0.04)],
                            defect_type="crack")
    return frame, inspection


def test_overlay_tints_only_the_mask_and_leaves_inputs_untouched():
    frame, inspection = _case()
    before = frame.copy()
    image = overlay(frame, inspection, color=(255, 0, 0), alpha=0.5, boxes=False, banner=False)
    out = np.asarray(image)
    assert image.size == (80, 60) and image.mode == "RGB"
    np.testing.assert_array_equal(out[35, 50], [178, 50, 50])  # 0.5 * 100 + 0.5 * (255, 0, 0), rounded
    np.testing.assert_array_equal(out[5, 5], [100, 100, 100])
    np.testing.assert_array_equal(frame, before)


def test_boxes_and_banner_are_drawn():
    frame, inspection = _case()
    plain = np.asarray(overlay(frame, inspection, boxes=False, banner=False))
    drawn = np.asarray(overlay(frame, inspection))
    assert (drawn[30, 40:60] != plain[30, 40:60]).any()  # box outline
    assert (drawn[:8, :40] != plain[:8, :40]).any()  # banner


def test_mask_of_another_frame_is_refused():
    frame, inspection = _case()
    with pytest.raises(ValueError, match="not this frame's result"):
        overlay(frame[:50], inspection)
    with pytest.raises(FrameError):
        overlay(None, inspection)
    with pytest.raises(ValueError, match="alpha"):
        overlay(frame, inspection, alpha=2)


def test_no_mask_gives_the_frame(tmp_path):
    frame, _ = _case()
    normal = Inspection(is_anomalous=False, score=0.01, mask=None)
    np.testing.assert_array_equal(np.asarray(overlay(frame, normal, banner=False)), frame)
    path = save_overlay(tmp_path / "out" / "o.png", frame, normal)
    with Image.open(path) as saved:
        assert saved.size == (80, 60)


def test_inspection_overlay_is_the_visualize_overlay():
    frame, inspection = _case()
    np.testing.assert_array_equal(np.asarray(inspection.overlay(frame, alpha=0.3)),
                                  np.asarray(overlay(frame, inspection, alpha=0.3)))


def test_visualize_is_public_without_importing_it():
    import subprocess
    import sys
    from pathlib import Path

    code = ("import omniad_edge; import numpy as np; "
            "r = omniad_edge.Inspection(is_anomalous=False, score=0.0, mask=np.zeros((16, 16), bool)); "
            "print(omniad_edge.visualize.overlay(np.zeros((16, 16, 3), np.uint8), r).size, "
            "omniad_edge.overlay is omniad_edge.visualize.overlay)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(Path(__file__).resolve().parents[1]))
    assert out.stdout.split() == ["(16,", "16)", "True"]
