"""Mask refinement: the coarse Text-as-Mask grid -> a pixel mask, with the bundle's optional `refine` graph.

The model writes its mask on a 16x16 grid: a 224 px frame gets 14 px cells, so a 2 px scratch can never score a
pixel IoU above ~0.1 however right the model is. A bundle may carry a small fully convolutional network
(`graphs.refine`, docs/DESIGN.md) that sees the frame and the coarse mask and predicts the defect's pixels:

- input `REFINE_INPUT` (1, 4, h, w) float32: the frame resized so its longer side is `graphs.refine.size` (both
  sides multiples of 4, bilinear), as RGB / 255 - 0.5, then the coarse mask upsampled (nearest) to (h, w);
- output `REFINE_OUTPUT` (1, 1, h, w) float32 logits, resized (bilinear) to the frame;
- the graph runs only on the window around the coarse region (the dilated mask's bounding box plus `MARGIN`
  pixels of context, in multiples of 4): a defect covering a few cells costs a fraction of the frame;
- the refined mask: logits > 0 inside the coarse mask dilated by `graphs.refine.dilate` grid cells. Refinement can
  move a boundary within that margin and drop pixels, never add a region the model did not write. When nothing is
  left (or the graph returns non-finite values or a wrong shape) the coarse mask is kept: the model's own claim is
  never erased, and a malformed output never raises.

Frames with an empty grid skip the graph (normal frames cost nothing). The graph runs on ONNX Runtime's CPU provider
(one session, shared by every thread; ONNX Runtime runs concurrent calls of a session). Training and export:
training/refine.py; adding it to a bundle: export/refine.py.
"""
from __future__ import annotations

import numpy as np

from .contract import REFINE_INPUT, REFINE_OUTPUT
from .errors import BackendError, BundleError

__all__ = ["Refiner", "refine_input", "dilate_grid", "work_size", "window"]

MARGIN = 24  # pixels of context around the region the graph may mark (about half its receptive field)
_OUTSIDE = -30.0  # logit of pixels outside the window (never marked)


def work_size(height: int, width: int, size: int) -> tuple[int, int]:
    """The graph's input size for a frame: longer side `size`, aspect kept, both sides multiples of 4 (>= 4)."""
    scale = size / max(height, width)
    return tuple(max(4, int(round(n * scale / 4)) * 4) for n in (height, width))


def dilate_grid(grid: np.ndarray, cells: int) -> np.ndarray:
    """Bool grid of the non-background cells grown by `cells` in every direction (8-connected)."""
    out = np.asarray(grid) != 0
    for _ in range(cells):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= grown[:, :-1].copy()
        grown[:, :-1] |= grown[:, 1:].copy()
        out = grown
    return out


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an (H, W) float32 or (H, W, 3) uint8 array to size (h, w) (Pillow)."""
    from PIL import Image

    h, w = size
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def refine_input(rgb: np.ndarray, grid: np.ndarray, size: int) -> np.ndarray:
    """The graph's input for one frame and its label grid: (1, 4, h, w) float32 (see the module docstring).
    training/refine.py builds its examples with this function, so training sees what the runtime feeds."""
    from . import tam

    hw = work_size(rgb.shape[0], rgb.shape[1], size)
    x = np.empty((1, 4) + hw, np.float32)
    x[0, :3] = _resize(rgb, hw).transpose(2, 0, 1)
    x[0, :3] *= 1.0 / 255.0
    x[0, :3] -= 0.5
    x[0, 3] = tam.grid_to_mask(np.asarray(grid, np.uint8), hw)
    return x


def window(gate: np.ndarray, margin: int = MARGIN) -> tuple[slice, slice]:
    """The bounding box of a (h, w) bool gate grown by margin, clipped, with edges on multiples of 4."""
    rows, cols = np.flatnonzero(gate.any(1)), np.flatnonzero(gate.any(0))
    y0, x0 = (max(0, (int(v[0]) - margin) // 4 * 4) for v in (rows, cols))
    y1, x1 = (min(n, -(-(int(v[-1]) + 1 + margin) // 4) * 4) for v, n in ((rows, gate.shape[0]), (cols, gate.shape[1])))
    return slice(y0, y1), slice(x0, x1)


class Refiner:
    """The refine graph of a bundle (an ONNX Runtime session) and the rule that turns its logits into a mask."""

    def __init__(self, bundle, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError("the refine graph runs on ONNX Runtime, which is not installed "
                               "(pip install onnxruntime)") from None

        spec = bundle.graphs["refine"]
        self.size, self.dilate = int(spec["size"]), int(spec["dilate"])  # checked by load_bundle
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or 0)
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(bundle.path(spec["path"])), sess_options=opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for a corrupt graph
            raise BundleError(f"bundle {bundle.root}: cannot load the refine graph {spec['path']!r}: {exc}") from None
        names = ([i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()])
        if names != ([REFINE_INPUT], [REFINE_OUTPUT]):
            raise BundleError(f"bundle {bundle.root}: the refine graph has inputs/outputs {names}, expected "
                              f"[{REFINE_INPUT!r}], [{REFINE_OUTPUT!r}]")

    def logits(self, rgb: np.ndarray, grid: np.ndarray) -> np.ndarray | None:
        """The graph's logits for a frame (run on the window around the coarse region), resized to the frame:
        (H, W) float32; None when the coarse region vanishes at the working size or the graph's output has
        another shape than its input window."""
        from . import tam

        x = refine_input(rgb, grid, self.size)
        hw = x.shape[2:]
        gate = tam.grid_to_mask(dilate_grid(grid, self.dilate).astype(np.uint8), hw)
        if not gate.any():
            return None
        ys, xs = window(gate)
        tile = np.ascontiguousarray(x[:, :, ys, xs])
        out = self.session.run([REFINE_OUTPUT], {REFINE_INPUT: tile})[0]
        if out.shape != (1, 1) + tile.shape[2:]:
            return None
        full = np.full(hw, _OUTSIDE, np.float32)
        full[ys, xs] = out[0, 0]
        return _resize(full, rgb.shape[:2])

    def refine(self, rgb: np.ndarray, grid: np.ndarray, coarse: np.ndarray) -> tuple[np.ndarray, bool]:
        """(refined (H, W) bool mask, True), or (coarse, False) when the grid is empty or nothing is left."""
        if not np.any(grid):
            return coarse, False
        from . import tam

        logits = self.logits(rgb, grid)
        if logits is None or not np.isfinite(logits).all():
            return coarse, False
        gate = tam.grid_to_mask(dilate_grid(grid, self.dilate).astype(np.uint8), rgb.shape[:2])
        mask = (logits > 0) & gate
        if not mask.any():
            return coarse, False
        return mask, True
