"""Pure functions: an overlay image from a frame and its Inspection (mask tint, boxes, verdict banner).

    from omniad_edge import visualize
    visualize.overlay(frame, inspection).save("overlay.png")   # or inspection.overlay(frame)

Public and stable; needs only Pillow (a core dependency). Reads an Inspection's fields and nothing else, so it
imports no other part of the runtime but the frame reader.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .frame import to_rgb

__all__ = ["overlay", "save_overlay"]


def overlay(frame, inspection, *, color: tuple[int, int, int] = (255, 40, 40), alpha: float = 0.45,
            boxes: bool = True, banner: bool = True, frame_color: str = "rgb"):
    """Return a new PIL RGB image: the frame with the defect mask tinted, boxes outlined and a verdict banner.

    inspection: an omniad_edge.Inspection (only its mask, boxes, is_anomalous, score and defect_type are read).
    """
    from PIL import Image, ImageDraw

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    rgb = to_rgb(frame, color=frame_color)
    out = rgb.astype(np.float32)
    if inspection.mask is not None:
        mask = np.asarray(inspection.mask, dtype=bool)
        if mask.shape != rgb.shape[:2]:
            raise ValueError(f"inspection mask is {mask.shape}, frame is {rgb.shape[:2]}: not this frame's result")
        out[mask] = (1.0 - alpha) * out[mask] + alpha * np.asarray(color, np.float32)
    image = Image.fromarray(np.rint(out).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    width = max(1, min(image.size) // 150)
    if boxes:
        for box in inspection.boxes:
            draw.rectangle([box.x0, box.y0, box.x1 - 1, box.y1 - 1], outline=color, width=width)
            draw.text((box.x0 + 2, max(0, box.y0 - 12)), box.label, fill=color)
    if banner:
        verdict = "ANOMALY" if inspection.is_anomalous else "OK"
        text = f"{verdict}  score {inspection.score:.3f}"
        if inspection.defect_type:
            text += f"  {inspection.defect_type}"
        left, top, right, bottom = draw.textbbox((0, 0), text)
        draw.rectangle([0, 0, right + 6, bottom + 4], fill=(0, 0, 0))
        draw.text((3, 2), text, fill=(255, 80, 80) if inspection.is_anomalous else (80, 255, 80))
    return image


def save_overlay(path: str | Path, frame, inspection, **kwargs) -> Path:
    """Write `overlay(frame, inspection, **kwargs)` to `path` (format from the suffix); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    overlay(frame, inspection, **kwargs).save(path)
    return path
