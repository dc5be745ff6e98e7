"""Inspection result: JSON round trip, RLE of the mask, options travel with the result."""
import json

import numpy as np
import pytest

from omniad_edge.inspection import NORMAL_SCORE_MAX, Box, Inspection, mask_from_rle, mask_to_rle, verdict_score


def _inspection(mask=None):
    if mask is None:
        mask = np.zeros((6, 8), bool)
        mask[1:3, 2:5] = True
    return Inspection(is_anomalous=True, score=0.93, mask=mask, boxes=[Box(2, 1, 5, 3, "scratch", 6 / 48)],
                      defect_type="scratch", explanation="A scratch.", answer="yes", text="<seg>...</seg>",
                      grid=np.zeros((2, 2), np.uint8), prompt_tokens=40, generated_tokens=12,
                      finish_reason="eos", timings={"total": 12.3456}, provider="CPUExecutionProvider",
                      options={"mode": "explain", "seed": np.int64(3), "shape": (1, 2)})


@pytest.mark.parametrize("mask", [np.zeros((3, 4), bool), np.ones((3, 4), bool),
                                  np.eye(5, dtype=bool), np.random.default_rng(0).random((7, 9)) > 0.5])
def test_rle_round_trip(mask):
    rle = mask_to_rle(mask)
    assert sum(rle["counts"]) == mask.size
    np.testing.assert_array_equal(mask_from_rle(rle), mask)


def test_rle_starts_with_background_run():
    mask = np.array([[True, True, False, True]])
    assert mask_to_rle(mask)["counts"] == [0, 2, 1, 1]


def test_to_json_is_plain_json_with_rle_mask():
    inspection = _inspection()
    data = json.loads(inspection.to_json())
    np.testing.assert_array_equal(mask_from_rle(data["mask"]), inspection.mask)
    assert data["boxes"][0] == {"x0": 2, "y0": 1, "x1": 5, "y1": 3, "label": "scratch", "area_fraction": 0.125}
    assert data["options"] == {"mode": "explain", "seed": 3, "shape": [1, 2]}
    assert data["timings"]["total"] == 12.346
    assert data["provider"] == "CPUExecutionProvider"


def test_mask_can_be_omitted_or_listed():
    inspection = _inspection()
    assert "mask" not in inspection.to_dict(mask="none") and "grid" not in inspection.to_dict(mask="none")
    assert inspection.to_dict(mask="list")["mask"][1][2] is True
    with pytest.raises(ValueError, match="mask must be"):
        inspection.to_dict(mask="png")


def test_rle_size_mismatch_is_reported():
    with pytest.raises(ValueError, match="rle counts"):
        mask_from_rle({"size": [2, 2], "counts": [1, 1]})


@pytest.mark.parametrize("anomalous, probability, score", [
    (True, 0.9, 0.9), (False, 0.1, 0.1),  # probability and verdict agree: the score is the probability
    (True, 0.2, 0.5), (False, 0.8, NORMAL_SCORE_MAX),  # they disagree: clipped to the verdict's side
    (True, 0.5, 0.5), (False, 0.5, NORMAL_SCORE_MAX),
    (True, None, 1.0), (False, None, 0.0), (False, float("nan"), 0.0), (True, float("inf"), 1.0),
    (True, 1.7, 1.0), (False, -0.2, 0.0),
])
def test_score_is_always_on_the_verdicts_side(anomalous, probability, score):
    got = verdict_score(anomalous, probability)
    assert got == score and (got >= 0.5) is anomalous
    assert 0.5 - 1e-15 < NORMAL_SCORE_MAX < 0.5


def test_to_dict_carries_score_and_probability():
    d = _inspection().to_dict()
    assert d["score"] == 0.93 and d["anomaly_probability"] is None and d["mask_refined"] is False
    inspection = _inspection()
    inspection.anomaly_probability = np.float64(0.25)
    assert json.loads(inspection.to_json())["anomaly_probability"] == 0.25
