"""Inference backends behind one interface (docs/DESIGN.md, "Python interfaces between modules").

A backend is built from a loaded Bundle and implements:

    name: str                      "onnxruntime" | "tensorrt"
    provider: str                  the effective execution provider / device actually running the graphs
    encode_image(vision_inputs: dict[str, np.ndarray]) -> image_embeds (N/4, out_hidden) float32
    new_cache(batch, max_len) -> KVCache
    forward(embeds (B,S,H) f32, position_ids (3,B,S) i64, attention_mask (B,P+S) i64, cache, past_len) -> logits
        logits (B, V) float32 for the last position; the new K/V land in cache slots [past_len, past_len + S).
        The returned array may be a buffer reused by the next forward on the same cache: copy it to keep it.
    concurrent: bool               True: encode_image and forward may run from several threads at once, each
                                   forward on its own cache (per-run state lives with the cache). False (the
                                   default when absent): the caller serialises every call.
    close() (optional)             releases sessions / device memory; the backend is unusable afterwards.
    on_forward: Callable[[int, float, float], None] | None
        Instrumentation hook, None by default (then a forward pays one attribute read for it). When set, every
        successful forward ends with on_forward(new_tokens, forward_seconds, graph_seconds), on the thread that ran
        it: the S tokens fed, the wall time of the whole forward call, and the part of it spent running the decoder
        graph (ONNX Runtime: the session run; TensorRT, whose execution is asynchronous: the whole forward). The
        rest is host overhead. Benchmarks set it (omniad_edge/bench.py); nothing in the runtime does.
    native_step(cache) (optional)  the compiled decode step bound to `cache` (omniad_edge._native.DecodeStep), or
                                   None: the Generator feeds tokens and runs token loops through it (generate.py).

KVCache below is the host-side cache (numpy, one preallocated buffer per layer, in the decoder graph's kv_layout:
BSHD or BNSH); a device backend may return its own cache type with the same `batch`, `max_len` and `copy_prefix`
members.
"""
from __future__ import annotations

import numpy as np

from ..errors import BackendError

__all__ = ["KVCache", "create_backend", "BACKENDS"]

BACKENDS = ("onnxruntime", "tensorrt")


class KVCache:
    """One preallocated buffer per layer for keys and for values: (batch, max_len, kv_heads, head_dim) for layout
    "BSHD", (batch, kv_heads, max_len, head_dim) for "BNSH" (the fused decoder's in-place cache).

    np.zeros maps untouched pages lazily, so a generous max_len costs memory only for the slots written (in BNSH
    each head's slots are contiguous, so that holds per head).
    """

    def __init__(self, num_layers: int, batch: int, max_len: int, kv_heads: int, head_dim: int,
                 dtype=np.float32, layout: str = "BSHD"):
        if batch <= 0 or max_len <= 0:
            raise ValueError(f"KVCache needs batch > 0 and max_len > 0, got batch={batch}, max_len={max_len}")
        if layout not in ("BSHD", "BNSH"):
            raise ValueError(f"KVCache layout must be 'BSHD' or 'BNSH', got {layout!r}")
        self.layout = layout
        shape = (batch, max_len, kv_heads, head_dim) if layout == "BSHD" else (batch, kv_heads, max_len, head_dim)
        self.keys = [np.zeros(shape, dtype) for _ in range(num_layers)]
        self.values = [np.zeros(shape, dtype) for _ in range(num_layers)]
        self.batch, self.max_len = batch, max_len
        self.backend_state = None  # what a backend keeps per cache (IO binding, logits buffer); never shared

    @property
    def num_layers(self) -> int:
        return len(self.keys)

    def copy_prefix(self, source: "KVCache", length: int, source_row: int = 0) -> None:
        """Copy slots [0, length) of one row of `source` into every row of this cache."""
        if length > self.max_len or length > source.max_len:
            raise ValueError(f"prefix of {length} slots does not fit (max_len {self.max_len}/{source.max_len})")
        if source.layout != self.layout:
            raise ValueError(f"copy_prefix: source cache is {source.layout}, this one {self.layout}")
        for dst, src in zip(self.keys + self.values, source.keys + source.values):
            if self.layout == "BSHD":
                dst[:, :length] = src[source_row, :length]
            else:
                dst[:, :, :length] = src[source_row, :, :length]


def create_backend(bundle, backend: str = "onnxruntime", **options):
    """Build the named backend for a loaded Bundle; options go to the backend's constructor."""
    if backend == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(bundle, **options)
    if backend == "tensorrt":
        try:
            from ..tensorrt.backend import TensorRTBackend
        except ImportError as exc:
            raise BackendError(f"the TensorRT backend is not available here: {exc}") from None
        return TensorRTBackend(bundle, **options)
    raise BackendError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
