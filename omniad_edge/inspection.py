"""The Inspection result: one schema for every backend and mode, carrying the options actually used."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

STAGES = ("preprocess", "vision", "prefill", "decode", "refine", "postprocess", "total")  # refine: with a refine graph
UNKNOWN_DEFECT = "unknown"  # defect_type of an anomalous verdict whose mask names no defect
NORMAL_SCORE_MAX = math.nextafter(0.5, 0.0)  # the highest score a normal verdict carries (just below 0.5)


def verdict_score(is_anomalous: bool, probability: float | None) -> float:
    """The score of a verdict: `is_anomalous == (score >= 0.5)` for every frame, by construction.

    It is the model's anomaly probability when that agrees with the verdict (nearly always: under greedy decoding a
    written defect mask implies a probability >= 0.5); when they disagree it is clipped to the verdict's side of 0.5
    (0.5 for an anomalous verdict, NORMAL_SCORE_MAX for a normal one). Without a probability: 1.0 or 0.0.
    """
    if probability is None or not math.isfinite(probability):
        return 1.0 if is_anomalous else 0.0
    p = min(1.0, max(0.0, float(probability)))
    return max(p, 0.5) if is_anomalous else min(p, NORMAL_SCORE_MAX)


@dataclass(frozen=True)
class Box:
    """An axis-aligned defect box in frame pixels: [x0, x1) x [y0, y1)."""

    x0: int
    y0: int
    x1: int
    y1: int
    label: str
    area_fraction: float  # defect pixels of this component / frame pixels

    def to_dict(self) -> dict:
        return {"x0": self.x0, "y0": self.y0, "x1": self.x1, "y1": self.y1, "label": self.label,
                "area_fraction": self.area_fraction}


def mask_to_rle(mask: np.ndarray) -> dict:
    """Row-major run lengths of a bool mask, starting with a (possibly empty) run of False."""
    flat = np.asarray(mask, dtype=bool).ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts.insert(0, 0)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "order": "row-major", "counts": counts}


def mask_from_rle(rle: dict) -> np.ndarray:
    h, w = rle["size"]
    values = np.zeros(len(rle["counts"]), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, rle["counts"])
    if flat.size != h * w:
        raise ValueError(f"rle counts sum to {flat.size}, size {h}x{w} needs {h * w}")
    return flat.reshape(h, w)


@dataclass
class Inspection:
    """Result of `Inspector.run(frame)`.

    is_anomalous is the model's own decision: the answer when the output has one (explain mode), otherwise a
    non-empty mask (detect mode), no threshold; an answer-only model whose answer is unreadable: its probability.

    score and anomaly_probability: one meaning for the verdict and the score, two quantities named for what they are.
    - anomaly_probability: the model's probability that the frame is anomalous, read from the logits it decodes
      with (generate.py): 1 - P(the model writes the empty mask) for mask models (a lower bound when the output
      left the empty-mask text), P(anomalous answer) / P(either answer) where the answer starts for answer-only
      models; None when the model gave neither. It can disagree with the verdict: greedy decoding writes the most
      likely *single* text, so the empty mask may be written while the many defect masks together weigh more (or,
      in explain mode, the answer may contradict the mask).
    - score: continuous in [0, 1] and always on the verdict's side, `is_anomalous == (score >= 0.5)` for every frame
      (verdict_score): the anomaly probability where it agrees with the verdict, else clipped to 0.5 (anomalous) or
      just below it (normal). Threshold or rank either; AUROC from both: README, "Score and verdict".

    mask: the grid upsampled to the frame, or, when the bundle has a refine graph, the refined pixel mask
    (mask_refined True; omniad_edge/refine.py); grid keeps the model's own cells either way.

    defect_type is the most frequent defect label of the mask grid. An anomalous verdict always has one: when the
    mask is empty (or the model writes none, as answer-only models) it is UNKNOWN_DEFECT ("unknown"). It is None only
    for a normal verdict with an empty or absent mask (a normal answer next to a non-empty mask keeps the mask's
    label, as the mask and boxes are kept too).
    """

    is_anomalous: bool
    score: float
    mask: np.ndarray | None  # bool (H, W) of the input frame
    boxes: list[Box] = field(default_factory=list)
    defect_type: str | None = None
    explanation: str | None = None
    answer: str | None = None
    text: str = ""  # raw generated text
    grid: np.ndarray | None = None  # decoded label grid (codec cells)
    mask_repaired: bool = False  # the mask text was malformed and was repaired (or dropped)
    mask_refined: bool = False  # mask and boxes come from the refine stage, not the grid
    prompt_tokens: int = 0
    generated_tokens: int = 0
    decode_forwards: int = 0  # decoder runs after the prefill: the denominator of decode speed (bench.decode_speed)
    finish_reason: str = ""  # eos | length | mask_closed
    timings: dict[str, float] = field(default_factory=dict)  # ms per stage, see STAGES
    provider: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    anomaly_probability: float | None = None  # the model's own probability; score is the verdict's (see above)

    def to_dict(self, *, mask: str = "rle") -> dict:
        """Plain JSON-able dict. mask="rle" (row-major run lengths), "none" (omitted) or "list" (nested lists)."""
        if mask not in ("rle", "none", "list"):
            raise ValueError(f"mask must be 'rle', 'none' or 'list', got {mask!r}")
        out = {
            "is_anomalous": bool(self.is_anomalous),
            "score": float(self.score),
            "anomaly_probability": None if self.anomaly_probability is None else float(self.anomaly_probability),
            "boxes": [b.to_dict() for b in self.boxes],
            "defect_type": self.defect_type,
            "explanation": self.explanation,
            "answer": self.answer,
            "text": self.text,
            "mask_repaired": bool(self.mask_repaired),
            "mask_refined": bool(self.mask_refined),
            "prompt_tokens": int(self.prompt_tokens),
            "generated_tokens": int(self.generated_tokens),
            "decode_forwards": int(self.decode_forwards),
            "finish_reason": self.finish_reason,
            "timings": {k: round(float(v), 3) for k, v in self.timings.items()},
            "provider": self.provider,
            "options": _jsonable(self.options),
        }
        if mask != "none" and self.mask is not None:
            out["mask"] = mask_to_rle(self.mask) if mask == "rle" else np.asarray(self.mask, bool).tolist()
        if mask != "none" and self.grid is not None:
            out["grid"] = np.asarray(self.grid).tolist()
        return out

    def to_json(self, *, mask: str = "rle", indent: int | None = None) -> str:
        return json.dumps(self.to_dict(mask=mask), indent=indent)

    def overlay(self, frame, **options):
        """The frame with this result drawn on it (PIL RGB image): omniad_edge.visualize.overlay(frame, self)."""
        from .visualize import overlay

        return overlay(frame, self, **options)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
