"""Image -> vision-graph inputs, on the host (numpy + Pillow only).

Mirrors transformers' Qwen2-VL image processor (smart resize, rescale, CLIP normalisation, patchify with 2x2 merge
blocks contiguous) and the index arrays Qwen2-VL/Qwen2.5-VL vision towers compute with Python loops (rotary patch
positions, window order, which patches attend to which). Computing the indices here lets one exported vision graph
serve every image size and several images concatenated.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .contract import MAX_ASPECT

__all__ = ["PreprocessedImage", "smart_resize", "resize", "normalise", "patchify", "preprocess_image",
           "vision_indices", "concat_images"]

_RESAMPLE = {"bicubic": 3, "bilinear": 2, "nearest": 0, "lanczos": 1}  # Pillow's Resampling values


@dataclass(frozen=True)
class PreprocessedImage:
    pixel_values: np.ndarray  # (N, 3*T*P*P) float32, processor patch order
    grid_thw: tuple[int, int, int]  # (1, H/P, W/P)
    resized: tuple[int, int]  # (H', W') in pixels


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 28 * 28 * 1280) -> tuple[int, int]:
    """Both sides multiples of `factor`, area within [min_pixels, max_pixels], aspect ratio kept as well as possible.

    Same arithmetic as transformers' qwen2_vl `smart_resize` (Python's round: half to even)."""
    for name, value in (("height", height), ("width", width), ("factor", factor)):
        if not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"smart_resize: {name} must be a positive int, got {value!r}")
    if min_pixels > max_pixels:
        raise ValueError(f"smart_resize: min_pixels ({min_pixels}) must not exceed max_pixels ({max_pixels})")
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise ValueError(f"smart_resize: aspect ratio must be at most {MAX_ASPECT}, got {height}x{width}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return int(h_bar), int(w_bar)


def _check_rgb(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        got = f"{type(rgb).__name__} {getattr(rgb, 'dtype', '')} {getattr(rgb, 'shape', '')}".strip()
        raise ValueError(f"rgb_uint8 must be an HxWx3 uint8 numpy array, got {got}")


def resize(rgb_uint8: np.ndarray, size: tuple[int, int], resample: str = "bicubic") -> np.ndarray:
    """Resize HxWx3 uint8 to size=(H', W') with Pillow on the uint8 image, as the PIL processor does."""
    from PIL import Image

    _check_rgb(rgb_uint8)
    if resample not in _RESAMPLE:
        raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got {resample!r}")
    h, w = size
    if (h, w) == rgb_uint8.shape[:2]:
        return rgb_uint8
    image = Image.fromarray(np.ascontiguousarray(rgb_uint8))
    return np.asarray(image.resize((w, h), resample=_RESAMPLE[resample]))


def normalise(rgb_uint8: np.ndarray, mean, std) -> np.ndarray:
    """HxWx3 uint8 -> 3xHxW float32: x/255, then (x - mean) / std per channel."""
    _check_rgb(rgb_uint8)
    mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    if np.any(std <= 0):
        raise ValueError(f"std must be positive per channel, got {std.ravel().tolist()}")
    chw = rgb_uint8.transpose(2, 0, 1).astype(np.float32) * np.float32(1 / 255)
    return (chw - mean) / std


def patchify(chw: np.ndarray, patch_size: int = 14, merge_size: int = 2, temporal_patch_size: int = 2
             ) -> tuple[np.ndarray, int, int]:
    """3xHxW float32 -> ((gh*gw, 3*T*P*P) float32, gh, gw); each merge_size x merge_size block of patches is
    contiguous (the processor's order), and a still image is repeated temporal_patch_size times."""
    c, h, w = chw.shape
    block = patch_size * merge_size
    if h % block or w % block:
        raise ValueError(f"patchify: image sides must be multiples of {block}, got {h}x{w}")
    gh, gw = h // patch_size, w // patch_size
    x = chw.reshape(c, gh // merge_size, merge_size, patch_size, gw // merge_size, merge_size, patch_size)
    x = x.transpose(1, 4, 2, 5, 0, 3, 6)  # (bh, bw, mh, mw, C, ph, pw)
    x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], temporal_patch_size, patch_size, patch_size))
    return np.ascontiguousarray(x.reshape(gh * gw, c * temporal_patch_size * patch_size * patch_size),
                                dtype=np.float32), gh, gw


def preprocess_image(rgb_uint8: np.ndarray, spec: dict) -> PreprocessedImage:
    """One HxWx3 uint8 RGB image -> patches for the vision graph, following the manifest's `preprocess` spec."""
    _check_rgb(rgb_uint8)
    try:
        patch, merge = int(spec["patch_size"]), int(spec["merge_size"])
        temporal = int(spec["temporal_patch_size"])
        min_pixels, max_pixels = int(spec["min_pixels"]), int(spec["max_pixels"])
        mean, std = spec["mean"], spec["std"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"spec must be the manifest's 'preprocess' dict; missing or invalid {exc}") from None
    if spec.get("max_image_tokens"):
        max_pixels = min(max_pixels, int(spec["max_image_tokens"]) * (patch * merge) ** 2)
    h, w = smart_resize(rgb_uint8.shape[0], rgb_uint8.shape[1], patch * merge, min_pixels, max_pixels)
    resized = resize(rgb_uint8, (h, w), spec.get("resample", "bicubic"))
    pixels, gh, gw = patchify(normalise(resized, mean, std), patch, merge, temporal)
    return PreprocessedImage(pixels, (1, gh, gw), (h, w))


def _grids(grid_thw_list) -> list[tuple[int, int, int]]:
    grids = [tuple(int(v) for v in g) for g in np.asarray(grid_thw_list, dtype=np.int64).reshape(-1, 3)]
    if not grids or any(v <= 0 for g in grids for v in g):
        raise ValueError(f"grid_thw_list must be a non-empty list of positive (t, h, w), got {grid_thw_list!r}")
    return grids


def _padded_groups(indices: np.ndarray, lengths: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Groups of patch indices (concatenated, `lengths` each) -> (gather (G, Lmax) with -1 padding, scatter (n,)):
    row g of gather lists group g's patches; scatter[p] is patch p's slot in the flattened (G * Lmax) result."""
    groups, longest = len(lengths), int(lengths.max())
    row = np.repeat(np.arange(groups), lengths)
    col = np.arange(len(indices)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    gather = np.full((groups, longest), -1, dtype=np.int64)
    gather[row, col] = indices
    scatter = np.empty(n, dtype=np.int64)
    scatter[indices] = row * longest + col
    return gather, scatter


def vision_indices(grid_thw_list, spatial_merge_size: int, window_size: int | None, patch_size: int
                   ) -> dict[str, np.ndarray]:
    """Index inputs of the vision graph for images concatenated along the patch axis (DESIGN.md, vision graph).

    Windows tile the merged-token grid of each frame from its top-left corner, `window_size // merge // patch`
    merged tokens a side (transformers' get_window_index); window_size None (Qwen2-VL) means no window blocks.
    The graph attends within groups (windows, frames) padded to the longest group: `*_gather` (groups, longest)
    lists each group's patches, -1 for padding, in transformers' order (window order); `*_scatter` (N,) puts the
    results back in patch order. window_index, reverse_window_index and the *_segments ids are the inputs of
    graphs exported before the grouped attention (their dense masks compare segment ids for equality)."""
    m = int(spatial_merge_size)
    win = None if window_size is None else int(window_size) // m // int(patch_size)
    if m <= 0 or (win is not None and win <= 0):
        raise ValueError(f"window_size ({window_size}) must be at least spatial_merge_size * patch_size "
                         f"({spatial_merge_size} * {patch_size})")
    unit = m * m
    rotary, token_order, window_of_token, window_sizes, frame_sizes = [], [], [], [], []
    token_offset = window_offset = 0
    for t, h, w in _grids(grid_thw_list):
        if h % m or w % m:
            raise ValueError(f"grid ({t}, {h}, {w}): h and w must be multiples of spatial_merge_size {m}")
        # rotary (row, col) of each patch, merge blocks contiguous, repeated for every frame
        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        rows = rows.reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).ravel()
        cols = cols.reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).ravel()
        rotary.append(np.tile(np.stack([rows, cols], axis=1), (t, 1)))
        lh, lw = h // m, w // m
        if win is None:
            order, window_id, n_windows = np.arange(lh * lw), np.zeros(lh * lw, np.int64), 1
        else:  # merged tokens of each frame grouped window by window (row-major windows, row-major inside)
            n_wh, n_ww = -(-lh // win), -(-lw // win)
            r, c = np.meshgrid(np.arange(lh), np.arange(lw), indexing="ij")
            window_id = ((r // win) * n_ww + (c // win)).ravel()
            order = np.lexsort(((r % win).ravel() * win + (c % win).ravel(), window_id))  # by window, then inside
            window_id, n_windows = window_id[order], n_wh * n_ww
        counts = np.bincount(window_id, minlength=n_windows) * unit
        for f in range(t):
            token_order.append(order + token_offset + f * lh * lw)
            window_of_token.append(window_id + window_offset + f * n_windows)
            window_sizes.append(counts[counts > 0])
            frame_sizes.append(lh * lw * unit)
        token_offset += t * lh * lw
        window_offset += t * n_windows
    window_index = np.concatenate(token_order).astype(np.int64)
    n = len(window_index) * unit
    patch_order = (window_index[:, None] * unit + np.arange(unit)).ravel()  # patches in window order
    frame_of_patch = np.repeat(np.arange(len(frame_sizes)), frame_sizes)
    out = {"rotary_pos_ids": np.concatenate(rotary).astype(np.int64)}
    out["image_gather"], out["image_scatter"] = _padded_groups(patch_order, np.asarray(frame_sizes), n)
    out["image_segments"] = frame_of_patch.astype(np.int64)
    if win is not None:
        out["window_gather"], out["window_scatter"] = _padded_groups(patch_order, np.concatenate(window_sizes), n)
        out["window_index"] = window_index
        out["reverse_window_index"] = np.argsort(window_index, kind="stable").astype(np.int64)
        out["window_segments"] = np.repeat(np.concatenate(window_of_token), unit).astype(np.int64)
    return out


def concat_images(images: list[PreprocessedImage], spatial_merge_size: int, window_size: int | None, patch_size: int
                  ) -> dict[str, np.ndarray]:
    """All vision-graph inputs for several images run in one call (pixel_values concatenated + indices)."""
    if not images:
        raise ValueError("images must hold at least one PreprocessedImage")
    inputs = vision_indices([im.grid_thw for im in images], spatial_merge_size, window_size, patch_size)
    inputs["pixel_values"] = np.concatenate([im.pixel_values for im in images]).astype(np.float32, copy=False)
    return inputs
