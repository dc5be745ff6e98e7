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
from .precision import graph_precision

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


def _grouped(manifest: dict, limits: Limits, fp16: bool) -> dict:
    """Peak activation bytes of the grouped vision graph (DESIGN.md, vision graph), for the profile's max shapes
    (TensorRT plans activation memory for those). Sums the tensors live at the peak of the worst block:

      live (residual, rotary)  4 N D + 8 N hd
      window block, plain      N D (4 + 3b) + 4 Nw D b + 12 Nw H Lw        (float32 scores, probabilities)
      full block, plain        N D (4 + 3b) + 4 Nf D b + 12 Nf H Lf        (Lf = Nf for one frame)
      any block, fused         N D (4 + 3b) + R (2 H (hd + 1) + 2 D) b     (R = Nw or Nf; no scores)
      MLP                      N D (4 + 4) + 4 N I 4 (float32: fp16 graphs pin the last blocks' MLP); int8 + N max(D, I)

    b = 2 for fp16, else 4. Checked against ONNX Runtime CPU peaks (benchmarks/results/vision-memory-formula.md),
    which ran 1.9-2.4x the sum: that excess is the CPU arena's rounded chunks, not tensors, and TensorRT sizes its
    activation memory from the built network, so no margin is added here.
    """
    vision = manifest["model"]["vision"]
    precision = graph_precision(manifest, "vision")
    b = 2 if (fp16 or precision == "fp16") else FP32
    d, heads = int(vision.get("hidden_size", 1280)), int(vision.get("num_heads", 16))
    hd, inter = d // heads, int(vision.get("intermediate_size") or 4 * d)
    profile = vision_profile(manifest, limits)
    n = profile["pixel_values"][2][0]
    frames, lf = profile["image_gather"][2]
    nf = frames * lf
    forms = manifest["graphs"]["vision"]["attention"]

    def block(form: str, rows: int, length: int) -> int:
        if form == "plain":
            return n * d * (4 + 3 * b) + 4 * rows * d * b + 12 * rows * heads * length
        return n * d * (4 + 3 * b) + rows * (2 * heads * (hd + 1) + 2 * d) * b

    terms = {}
    full = len(set(vision.get("fullatt_block_indexes", [])))
    if "window_gather" not in profile or full:  # Qwen2-VL has no windows: every block is full
        terms["full_block"] = block(forms.get("full", "plain"), nf, lf)
    if "window_gather" in profile and full < int(vision.get("depth", 0)):
        windows, lw = profile["window_gather"][2]
        terms["window_block"] = block(forms.get("window", "plain"), windows * lw, lw)
    terms["mlp"] = n * d * 8 + 16 * n * inter + (n * max(d, inter) if precision == "int8" else 0)
    live = 4 * n * d + 8 * n * hd
    return {"live": live, **terms, "peak": live + max(terms.values())}


def estimate_memory(manifest: dict, limits: Limits, *, fp16: bool = False, integrated: bool = False,
                    root: Path | None = None) -> MemoryEstimate:
    """Weights + KV cache + activations + I/O buffers, from the manifest alone (before any build).

    Vision: the grouped graph's peak (`_grouped`); only plain full-attention blocks hold scores, per frame, so it
    grows with the square of the frame's patches only there (`--vision-attention plain`, the TensorRT form), else
    linearly. Graphs exported before the grouped attention hold N x N scores in every block. Decoder: attention
    scores and probabilities are assumed materialised (fused kernels need less), so that part errs high.
    `fp16` halves float32 weights and activations (an fp32 bundle built with --fp16).
    """
    model, vision = manifest["model"], manifest["model"]["vision"]
    precision = manifest.get("precision", "fp32")
    half = fp16 or precision == "fp16"
    act = 2 if half else FP32
    weight_scale = 0.5 if (fp16 and precision == "fp32") else 1.0
    weights = {g: int(_file_bytes(manifest, graph_files(manifest, g), root) * weight_scale)
               for g in ("vision", "decoder")}

    if "attention" in manifest["graphs"]["vision"]:
        vision_parts = _grouped(manifest, limits, fp16)
        vision_act = vision_parts.pop("peak")
    else:
        n_max = vision_profile(manifest, limits)["pixel_values"][2][0]
        v_heads, v_hidden = int(vision.get("num_heads", 16)), int(vision.get("hidden_size", 1280))
        vision_act = 2 * v_heads * n_max * n_max * act + 16 * n_max * v_hidden * act
        vision_parts = {}

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
             "vision_activations": vision_act, **{f"vision_{k}": v for k, v in vision_parts.items()},
             "prefill_activations": prefill_act, "decode_activations": decode_act}
    return MemoryEstimate(weights=sum(weights.values()), kv_cache=kv, activations=vision_act + prefill_act + decode_act,
                          io_buffers=io, host_embeddings=host, parts=parts)


def check_memory(estimate: MemoryEstimate, device: DeviceInfo) -> None:
    """Refuse limits whose estimate exceeds the device's free memory, naming the flags that lower it."""
    if estimate.total > device.free_memory:
        gib = 1 << 30
        raise BackendError(
            f"not enough device memory on {device.name}: the asked limits need about {estimate.describe()}, "
            f"{device.free_memory / gib:.2f} GiB is free of {device.total_memory / gib:.2f} GiB. Lower "
            "--max-image-tokens (plain full-attention vision blocks grow with its square, everything else "
            "linearly), --max-seq-len or --batch, build with "
            "--fp16, or pass --skip-memory-check if you know better"
        )
