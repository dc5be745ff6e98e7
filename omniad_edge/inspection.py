"""The Inspection result: one schema for every backend and mode, carrying the options actually used."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

STAGES = ("preprocess", "vision", "prefill", "decode", "postprocess", "total")
UNKNOWN_DEFECT = "unknown"  # defect_type of an anomalous verdict whose mask names no defect


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

    score is continuous in [0, 1] (1 - probability of the empty mask text; see generate.py), so AUROC needs no
    threshold; is_anomalous is the model's own decision (answer if present, otherwise a non-empty mask).

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
    prompt_tokens: int = 0
    generated_tokens: int = 0
    decode_forwards: int = 0  # decoder runs after the prefill: the denominator of decode speed (bench.decode_speed)
    finish_reason: str = ""  # eos | length | mask_closed
    timings: dict[str, float] = field(default_factory=dict)  # ms per stage, see STAGES
    provider: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, *, mask: str = "rle") -> dict:
        """Plain JSON-able dict. mask="rle" (row-major run lengths), "none" (omitted) or "list" (nested lists)."""
        if mask not in ("rle", "none", "list"):
            raise ValueError(f"mask must be 'rle', 'none' or 'list', got {mask!r}")
        out = {
            "is_anomalous": bool(self.is_anomalous),
            "score": float(self.score),
            "boxes": [b.to_dict() for b in self.boxes],
            "defect_type": self.defect_type,
            "explanation": self.explanation,
            "answer": self.answer,
            "text": self.text,
            "mask_repaired": bool(self.mask_repaired),
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
