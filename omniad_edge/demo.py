"""`omniad-edge demo`: inspect a few synthetic frames with the default (or a given) engine and save the results.

    from omniad_edge.demo import run_demo
    rows = run_demo("demo_out", n=8)      # frames, overlays, results.json; one dict per frame

The frames are synthetic parts the reference model never trained on (seeds from synth.FIRST_UNSEEN_SEED on, its
test split) and are written in a mix of sizes and file
formats (RGB, grey, RGBA, 16-bit grey PNG) that the runtime reads back from disk, as a camera pipeline would hand them
over.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import synth
from .errors import OmniADError

# (height, width) and storage mode per frame, cycled: sizes the preprocessor has to resize, modes it must convert
_SIZES = ((224, 224), (256, 320), (300, 200), (224, 224), (448, 448), (180, 240))
_MODES = ("rgb", "grey", "rgba", "grey16")


class DemoError(OmniADError, ValueError):
    """Bad arguments to run_demo."""


def _save(path: Path, rgb: np.ndarray, mode: str) -> Path:
    from PIL import Image

    if mode == "rgb":
        Image.fromarray(rgb).save(path)
    elif mode == "grey":
        Image.fromarray(rgb).convert("L").save(path)
    elif mode == "rgba":
        Image.fromarray(np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)).save(path)
    else:  # 16-bit grey PNG (Pillow writes 16-bit single-channel PNGs, not 16-bit RGB)
        grey = np.asarray(Image.fromarray(rgb).convert("L"), np.uint16) * 257
        Image.fromarray(grey).save(path)
    return path


def _iou(a: np.ndarray, b: np.ndarray) -> float | None:
    union = np.logical_or(a, b).sum()
    return None if union == 0 else float(np.logical_and(a, b).sum() / union)


def run_demo(out_dir, n: int = 8, seed: int = 0, engine=None) -> list[dict]:
    """Inspect n synthetic frames (seeds synth.FIRST_UNSEEN_SEED + seed .. + seed+n-1) and write, under out_dir,
    frame_XX.png (the input as stored), overlay_XX.png and results.json. Returns one dict per frame.

    engine: None (the embedded default bundle), a bundle directory, or an Inspector to reuse.
    """
    from .inspector import Inspector

    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or not 1 <= n <= 1000:
        raise DemoError(f"n must be an int in 1..1000, got {n!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise DemoError(f"seed must be a non-negative int, got {seed!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DemoError(f"out_dir {str(out)!r} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    inspector = engine if isinstance(engine, Inspector) else Inspector(engine, mode="explain")

    from .visualize import save_overlay

    rows = []
    for k in range(int(n)):
        index = int(seed) + k
        h, w = _SIZES[index % len(_SIZES)]
        mode = _MODES[index % len(_MODES)]
        sample = synth.make_sample(synth.FIRST_UNSEEN_SEED + index, size=(h, w))
        frame_path = _save(out / f"frame_{k:02d}.png", sample.image, mode)
        result = inspector.run(str(frame_path))
        overlay_path = save_overlay(out / f"overlay_{k:02d}.png", str(frame_path), result)
        pred = result.mask if result.mask is not None else np.zeros(sample.mask.shape, bool)
        rows.append({
            "frame": frame_path.name, "overlay": Path(overlay_path).name, "size": [h, w], "mode": mode,
            "surface": sample.surface, "truth": sample.defect or "none", "truth_anomalous": sample.anomalous,
            "anomalous": bool(result.is_anomalous), "score": round(float(result.score), 4),
            "defect_type": result.defect_type, "explanation": result.explanation, "answer": result.answer,
            "correct": bool(result.is_anomalous) == sample.anomalous,
            "iou": _iou(pred, sample.mask) if sample.anomalous else None,
            "tokens": int(result.generated_tokens), "ms": round(float(result.timings.get("total", 0.0)), 1),
        })
    (out / "results.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return rows
