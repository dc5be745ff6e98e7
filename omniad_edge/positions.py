"""3-D multimodal rotary positions (mrope) of Qwen2.5-VL, on the host (numpy only).

Text tokens get (i, i, i); the image-pad tokens of one image get (s, s + row, s + col) over its merged grid, where s
is the next free position; text after an image continues at max + 1. Decoding continues at
`t + delta` on all three axes, t counted from the prompt's first real (non-padding) token.
Same result as transformers' `Qwen2_5_VLModel.get_rope_index` for still images.
"""
from __future__ import annotations

import numpy as np

__all__ = ["rope_positions", "batch_rope_positions", "decode_positions"]


def rope_positions(input_ids, image_grid_thw, tokens: dict, spatial_merge_size: int) -> tuple[np.ndarray, int]:
    """Positions of one unpadded prompt: ((3, S) int64, delta) with delta = max position + 1 - S.

    `tokens` is the manifest's tokens dict (only `image_pad` is used); `image_grid_thw` lists the (t, h, w) patch
    grid of each image in prompt order. Each run of image-pad tokens must match the next image's merged-token count.
    """
    ids = np.asarray(input_ids)
    if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"input_ids must be a non-empty 1-D integer array, got shape {ids.shape} {ids.dtype}")
    try:
        image_pad = int(tokens["image_pad"])
    except (KeyError, TypeError, ValueError):
        raise ValueError("tokens must be the manifest's tokens dict with an int 'image_pad'") from None
    m = int(spatial_merge_size)
    if m <= 0:
        raise ValueError(f"spatial_merge_size must be positive, got {spatial_merge_size!r}")
    grids = [tuple(int(v) for v in g) for g in (np.asarray(image_grid_thw, dtype=np.int64).reshape(-1, 3)
                                                if image_grid_thw is not None and len(image_grid_thw) else [])]

    is_image = ids == image_pad
    # run boundaries: indices where the token type changes
    edges = np.flatnonzero(np.diff(is_image.astype(np.int8))) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [ids.size]])

    pos = np.empty((3, ids.size), dtype=np.int64)
    next_pos = 0
    grid_iter = iter(grids)
    for start, end in zip(starts.tolist(), ends.tolist()):
        if not is_image[start]:
            pos[:, start:end] = np.arange(next_pos, next_pos + end - start)
            next_pos += end - start
            continue
        cursor = start
        while cursor < end:  # adjacent images share one run: split it grid by grid
            grid = next(grid_iter, None)
            if grid is None:
                raise ValueError(f"input_ids hold more image-pad tokens than image_grid_thw describes ({grids})")
            t, h, w = grid
            lh, lw = h // m, w // m
            count = t * lh * lw
            if cursor + count > end:
                raise ValueError(f"image-pad run at {start}:{end} is shorter than image grid {grid} needs "
                                 f"({count} merged tokens)")
            tt, hh, ww = np.meshgrid(np.arange(t), np.arange(lh), np.arange(lw), indexing="ij")
            pos[0, cursor:cursor + count] = tt.ravel() + next_pos
            pos[1, cursor:cursor + count] = hh.ravel() + next_pos
            pos[2, cursor:cursor + count] = ww.ravel() + next_pos
            next_pos += max(h, w) // m
            cursor += count
    if next(grid_iter, None) is not None:
        raise ValueError(f"image_grid_thw describes more images than input_ids hold ({grids})")
    delta = int(pos.max()) + 1 - ids.size
    return pos, delta


def batch_rope_positions(input_ids_list, grids_list, tokens: dict, spatial_merge_size: int
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left-padded batch: (position_ids (3, B, S) int64, attention_mask (B, S) int64, deltas (B,) int64).

    Padding slots get position 0 and mask 0 (their values never reach a real token)."""
    if len(input_ids_list) != len(grids_list) or not input_ids_list:
        raise ValueError("input_ids_list and grids_list must be non-empty and of equal length")
    width = max(len(ids) for ids in input_ids_list)
    batch = len(input_ids_list)
    positions = np.zeros((3, batch, width), dtype=np.int64)
    mask = np.zeros((batch, width), dtype=np.int64)
    deltas = np.zeros(batch, dtype=np.int64)
    for b, (ids, grids) in enumerate(zip(input_ids_list, grids_list)):
        pos, deltas[b] = rope_positions(ids, grids, tokens, spatial_merge_size)
        positions[:, b, width - len(ids):] = pos
        mask[b, width - len(ids):] = 1
    return positions, mask, deltas


def decode_positions(steps, deltas) -> np.ndarray:
    """Position ids (3, B, 1) of the next token; steps[b] = real tokens already in sequence b's cache."""
    steps = np.asarray(steps, dtype=np.int64).reshape(-1)
    deltas = np.asarray(deltas, dtype=np.int64).reshape(-1)
    if steps.shape != deltas.shape:
        raise ValueError(f"steps and deltas must have the same length, got {steps.shape} and {deltas.shape}")
    return np.broadcast_to((steps + deltas)[None, :, None], (3, steps.size, 1)).copy()
