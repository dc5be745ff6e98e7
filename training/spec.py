"""The output spec (training/output_spec.json): prompts, output grammar and preprocessing in one file.

Training builds its prompts and targets from this file only, and the exporter copies it into the bundle manifest
(`--output-spec`), so the runtime reads exactly the grammar the model was trained on.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

SPEC_PATH = Path(__file__).resolve().parent / "output_spec.json"

# Preprocessing of the reference model: a 224x224 frame stays as it is (8x8 = 64 image tokens); other sizes are
# resized into at most 64 tokens. Written to the checkpoint's preprocessor_config.json, whence the exporter copies
# it into the manifest (export with --max-image-tokens 64).
PREPROCESS = {"patch_size": 14, "merge_size": 2, "temporal_patch_size": 2, "min_pixels": 3136, "max_pixels": 50176,
              "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
              "resample": "bicubic", "max_image_tokens": 64}

# The explanation, written from the mask grid: what, where (3x3 regions of the frame), how large.
EXPLANATION = {
    "normal": "No defect is visible.",
    "anomalous": "{type} at the {where}, about {percent}% of the image.",
    "where": [["upper left", "top", "upper right"], ["left", "center", "right"],
              ["lower left", "bottom", "lower right"]],
}


@lru_cache(maxsize=None)
def _load(path: str) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def load_spec(path: str | Path | None = None) -> dict:
    return _load(str(path or SPEC_PATH))


def image_placeholder(spec: dict, n_tokens: int) -> str:
    return spec["prompt"]["image"].format(image_pads="<|image_pad|>" * n_tokens)


def render_prompt(spec: dict, n_image_tokens: int, query_intro: bool = False) -> str:
    """The chat prompt text for one query image, up to the assistant turn, laid out as omniad_edge.prompt renders
    it (parts back to back; the query intro only follows reference images). Training tokenizes with
    omniad_edge.prompt itself; this text feeds the tokenizer's corpus and the docs."""
    p = spec["prompt"]
    content = (p["query_intro"] if query_intro else "") + image_placeholder(spec, n_image_tokens) + p["detect"]
    return p["template"].format(system=p["system"], content=content)


def codec(spec: dict):
    from omniad_edge import tam

    return tam.codec_from_spec(spec["output"]["mask"])


def mask_grid(spec: dict, mask: np.ndarray, label: int) -> np.ndarray:
    """Pixel mask (H, W) bool -> (grid, grid) uint8 label grid with the spec's coverage rule."""
    from omniad_edge import tam

    m = spec["output"]["mask"]
    cells = tam.mask_to_grid(np.asarray(mask, bool), m["grid"], m["coverage"])
    return np.where(np.asarray(cells, bool), label, m["background"]).astype(np.uint8)


def explanation(spec: dict, grid: np.ndarray) -> str:
    """A short explanation guided by the mask grid: the type, where (3x3 regions of the frame), how large."""
    e = EXPLANATION
    labels = spec["output"]["mask"]["labels"]
    bg = spec["output"]["mask"]["background"]
    fg = grid != bg
    if not fg.any():
        return e["normal"]
    values, counts = np.unique(grid[fg], return_counts=True)
    kind = labels[int(values[np.argmax(counts)])]
    ys, xs = np.nonzero(fg)
    g = grid.shape[0]
    row = min(2, int(ys.mean() + 0.5) * 3 // g)
    col = min(2, int(xs.mean() + 0.5) * 3 // g)
    percent = max(1, int(round(100.0 * fg.mean())))
    return e["anomalous"].format(type=kind.capitalize(), where=e["where"][row][col], percent=percent)


def target_text(spec: dict, grid: np.ndarray) -> str:
    """`<seg>MASK</seg><think>EXPLANATION</think><answer>ANSWER</answer>` in the spec's order and tags."""
    out = spec["output"]
    anomalous = bool((grid != out["mask"]["background"]).any())
    parts = {"mask": codec(spec).encode(grid), "explanation": explanation(spec, grid),
             "answer": out["answers"]["anomalous" if anomalous else "normal"]}
    return "".join(out["tags"][k][0] + parts[k] + out["tags"][k][1] for k in out["order"])


def sample_grid(spec: dict, sample) -> np.ndarray:
    """The label grid a synth.Sample should produce (all background for a normal part)."""
    if not sample.anomalous:
        g = spec["output"]["mask"]["grid"]
        return np.full((g, g), spec["output"]["mask"]["background"], np.uint8)
    return defect_grid(spec, sample.mask, spec["output"]["mask"]["labels"].index(sample.defect))


def defect_grid(spec: dict, mask: np.ndarray, label: int) -> np.ndarray:
    """The label grid of a defect's pixel mask; never all background."""
    grid = mask_grid(spec, mask, label)
    if not grid.any():
        # spread too thin for the coverage rule in every cell: keep the cell it covers most, so an anomalous
        # frame never gets a "none" target
        g = grid.shape[0]
        h, w = mask.shape
        ys = -((-np.arange(g + 1) * h) // g)
        xs = -((-np.arange(g + 1) * w) // g)
        counts = np.add.reduceat(np.add.reduceat(np.asarray(mask, np.int64), ys[:-1], axis=0), xs[:-1], axis=1)
        grid[np.unravel_index(int(np.argmax(counts)), counts.shape)] = label
    return grid
