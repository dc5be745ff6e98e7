"""The device-memory estimate for a set of limits, from the manifest alone (before any build), and the check
against the device's free memory. Pure Python.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BackendError
from .cuda import DeviceInfo
from .limits import FP32, Limits, io_buffer_plan, kv_cache_bytes, kv_scratch_bytes, vision_profile

__all__ = ["MemoryEstimate", "estimate_memory", "check_memory", "graph_files", "RUNTIME_OVERHEAD"]

# CUDA context + TensorRT/cuBLAS kernels resident per process; measured figures vary, this is a planning margin.
RUNTIME_OVERHEAD = 512 << 20


@dataclass(frozen=True)
class MemoryEstimate:
    """Device bytes the runtime needs for the given limits, by part (approximate; see docs/TENSORRT.md)."""

    weights: int
    kv_cache: int
    activations: int
    io_buffers: int
    host_embeddings: int  # counted only on integrated devices, where host RAM is device memory
    overhead: int = RUNTIME_OVERHEAD
    parts: dict = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.io_buffers + self.host_embeddings + self.overhead

    def describe(self) -> str:
        gib = 1 << 30
        items = [("weights", self.weights), ("KV cache", self.kv_cache), ("activations", self.activations),
                 ("I/O buffers", self.io_buffers), ("host embeddings", self.host_embeddings),
                 ("runtime overhead", self.overhead)]
        body = ", ".join(f"{name} {size / gib:.2f}" for name, size in items if size)
        return f"{self.total / gib:.2f} GiB ({body} GiB)"


def graph_files(manifest: dict, graph: str) -> list[str]:
    """The graph file and its external-data files (named after the graph's stem by the exporter)."""
    path = manifest["graphs"][graph]["path"]
    stem = path.rsplit(".", 1)[0]
    return [f for f in manifest["files"] if f == path or (f.startswith(stem + ".") and not f.endswith(".onnx"))]


def _file_bytes(manifest: dict, names: list[str], root: Path | None) -> int:
    total = 0
    for name in names:
        entry = manifest["files"].get(name, {})
        if "bytes" in entry:
            total += int(entry["bytes"])
        elif root is not None and (root / name).is_file():
            total += (root / name).stat().st_size
    return total


def estimate_memory(manifest: dict, limits: Limits, *, fp16: bool = False, integrated: bool = False,
                    root: Path | None = None) -> MemoryEstimate:
    """Weights + KV cache + activations + I/O buffers, from the manifest alone (before any build).

    Activations assume attention scores and probabilities are materialised (fused attention kernels need less),
    so the figure errs high. `fp16` halves float32 weights and activations (an fp32 bundle built with --fp16).
    """
    model, vision = manifest["model"], manifest["model"]["vision"]
    precision = manifest.get("precision", "fp32")
    half = fp16 or precision == "fp16"
    act = 2 if half else FP32
    weight_scale = 0.5 if (fp16 and precision == "fp32") else 1.0
    weights = {g: int(_file_bytes(manifest, graph_files(manifest, g), root) * weight_scale)
               for g in ("vision", "decoder")}

    n_max = vision_profile(manifest, limits)["pixel_values"][2][0]
    v_heads, v_hidden = int(vision.get("num_heads", 16)), int(vision.get("hidden_size", 1280))
    vision_act = 2 * v_heads * n_max * n_max * act + 16 * n_max * v_hidden * act

    hidden = int(model["hidden_size"])
    heads = int(model.get("num_attention_heads") or hidden // int(model["head_dim"]))
    inter = int(model.get("intermediate_size") or math.ceil(5.5 * hidden))
    b, s, p = limits.batch, limits.max_prefill, limits.max_seq_len
    prefill_act = 2 * b * heads * s * (p + s) * act + b * s * (4 * hidden + 3 * inter) * act
    decode_act = 2 * b * heads * (p + 1) * act + b * (4 * hidden + 3 * inter) * act

    host = 0
    if integrated:
        host = _file_bytes(manifest, [manifest["embed_tokens"]["path"]], root)
    io = sum(io_buffer_plan(manifest, limits).values())
    kv = kv_cache_bytes(manifest, limits) + kv_scratch_bytes(manifest, limits)
    parts = {"vision_weights": weights["vision"], "decoder_weights": weights["decoder"],
             "vision_activations": vision_act, "prefill_activations": prefill_act, "decode_activations": decode_act}
    return MemoryEstimate(weights=sum(weights.values()), kv_cache=kv, activations=vision_act + prefill_act + decode_act,
                          io_buffers=io, host_embeddings=host, parts=parts)


def check_memory(estimate: MemoryEstimate, device: DeviceInfo) -> None:
    if estimate.total > device.free_memory:
        gib = 1 << 30
        raise BackendError(
            f"not enough device memory on {device.name}: the asked limits need about {estimate.describe()}, "
            f"{device.free_memory / gib:.2f} GiB is free of {device.total_memory / gib:.2f} GiB. Lower "
            "--max-image-tokens (vision attention grows with its square), --max-seq-len or --batch, build with "
            "--fp16, or pass --skip-memory-check if you know better"
        )
