"""Any frame -> HxWx3 uint8 RGB, validated.

Accepted: numpy HxWx3 (RGB, or BGR with color="bgr"), HxW / HxWx1 grey, HxWx4 RGBA/BGRA (alpha dropped: an
inspection frame has no meaningful background to composite on), uint8, uint16 (scaled to 8 bit), float in [0, 1];
PIL images of any mode; str / Path / bytes-like file contents (anything Pillow reads).

Size rule: a frame needs at least MIN_SIDE (14 px, one vision patch) on each side. The preprocessor upscales small
frames to the bundle's min_pixels, but below one patch per side the frame holds no structure worth inspecting and
the result would only reflect interpolation. Above MAX_PIXELS (100 MP) the frame is refused before any copy is made:
the preprocessor scales to max_pixels (~1 MP) anyway, so such a frame is almost always a mistake (or a bomb).
The aspect ratio is capped at MAX_ASPECT (Qwen2.5-VL's own limit).
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .contract import MAX_ASPECT
from .errors import FrameError

MIN_SIDE = 14
MAX_PIXELS = 100_000_000


def _check_size(h: int, w: int, what: str) -> None:
    if h == 0 or w == 0:
        raise FrameError(f"frame: {what} is empty ({h}x{w})")
    if h < MIN_SIDE or w < MIN_SIDE:
        raise FrameError(f"frame: {what} is {h}x{w}, smaller than the minimum {MIN_SIDE}x{MIN_SIDE} (one patch)")
    if h * w > MAX_PIXELS:
        raise FrameError(f"frame: {what} is {h}x{w} = {h * w / 1e6:.0f} MP, above the {MAX_PIXELS // 10**6} MP cap")
    if max(h, w) / min(h, w) > MAX_ASPECT:
        raise FrameError(f"frame: {what} is {h}x{w}, aspect ratio above {MAX_ASPECT}")


def _from_array(arr: np.ndarray, color: str) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise FrameError(
            f"frame: array of shape {arr.shape} is not an image; expected HxW, HxWx1, HxWx3 or HxWx4"
        )
    _check_size(arr.shape[0], arr.shape[1], "array")

    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.uint16:
        # Round-to-nearest 16 -> 8 bit (65535 -> 255).
        out = ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise FrameError("frame: float array contains NaN or infinity")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise FrameError(f"frame: float array must lie in [0, 1], got values in [{lo:g}, {hi:g}]")
        out = np.rint(arr.astype(np.float32) * 255.0).astype(np.uint8)
    else:
        raise FrameError(f"frame: array dtype {arr.dtype} is not supported; expected uint8, uint16 or float in [0, 1]")

    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    else:
        out = out[:, :, :3]
        if color == "bgr":
            out = out[:, :, ::-1]
    return np.ascontiguousarray(out)


def _from_pil(image: Any) -> np.ndarray:
    w, h = image.size
    _check_size(h, w, "image")
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return _from_array(np.asarray(image).astype(np.uint16), "rgb")
    if mode in ("I", "F"):
        # 32-bit modes have no fixed range: refuse rather than guess a scaling.
        raise FrameError(f"frame: PIL mode {mode!r} has no defined range; convert it to 8-bit or 16-bit first")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
    try:
        rgb = np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise FrameError(f"frame: cannot convert PIL image of mode {mode!r} to RGB: {exc}") from None
    return np.ascontiguousarray(rgb)


def _open_image(source: Any, what: str) -> np.ndarray:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            # Pillow warns from 89 MP; our own cap (MAX_PIXELS) is enforced below instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)
        with image:
            w, h = image.size
            _check_size(h, w, what)
            image.load()
            return _from_pil(image)
    except FrameError:
        raise
    except Image.DecompressionBombError as exc:
        raise FrameError(f"frame: {what} is too large to decode safely: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise FrameError(f"frame: cannot read {what}: {exc}") from None


def to_rgb(frame: Any, *, color: str = "rgb") -> np.ndarray:
    """Return `frame` as a C-contiguous HxWx3 uint8 RGB array, or raise FrameError naming the problem.

    color: channel order of 3/4-channel numpy input, "rgb" (default) or "bgr" (OpenCV). PIL images and files carry
    their own mode and ignore it.
    """
    if color not in ("rgb", "bgr"):
        raise FrameError(f"frame: color must be 'rgb' or 'bgr', got {color!r}")
    if frame is None:
        raise FrameError("frame: got None; expected an image array, PIL image or file path")
    if isinstance(frame, np.ndarray):
        return _from_array(frame, color)
    if isinstance(frame, (str, os.PathLike)):
        path = Path(frame)
        if not path.is_file():
            raise FrameError(f"frame: file {str(path)!r} does not exist")
        return _open_image(path, f"file {str(path)!r}")
    if isinstance(frame, (bytes, bytearray, memoryview)):
        if len(frame) == 0:
            raise FrameError("frame: bytes input is empty")
        return _open_image(io.BytesIO(bytes(frame)), "image bytes")
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a hard dependency
        Image = None
    if Image is not None and isinstance(frame, Image.Image):
        return _from_pil(frame)
    raise FrameError(
        f"frame: type {type(frame).__name__} is not supported; expected a numpy array, PIL image, path or bytes"
    )
