"""Precision rules, pure Python: which flags a GPU and a TensorRT version can honour, which bundles TensorRT can
parse, when a network is strongly typed, and which vision layers stay fp32 under --fp16.
"""
from __future__ import annotations

import re

from ..errors import BackendError, BundleError
from .cuda import DeviceInfo
from .limits import BuildOptions

__all__ = ["check_precision", "check_bundle_precision", "check_quantization", "strongly_typed", "graph_precision",
           "min_compute_capability", "vision_fp32_layers"]


# Precision support by compute capability (CUDA docs / TensorRT support matrix).
MIN_CC_FP16 = (5, 3)
MIN_CC_INT8 = (6, 1)
MIN_CC_FP8 = (8, 9)


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version)[:3])


def min_compute_capability(trt_version: str) -> tuple[int, int]:
    """TensorRT 10.0-10.4 run on Volta (7.0) and newer; 10.5 removed Volta."""
    return (7, 5) if _version_tuple(trt_version) >= (10, 5) else (7, 0)


def graph_precision(manifest: dict, graph: str) -> str:
    """A graph's own precision (the exporter may keep vision at another precision than the decoder)."""
    return manifest["graphs"][graph].get("precision", manifest.get("precision", "fp32"))


def check_bundle_precision(manifest: dict) -> None:
    """int8/int4 graphs hold ONNX Runtime-only operators that TensorRT's parser rejects."""
    ops = {"int8": "MatMulInteger/DynamicQuantizeLinear (ONNX Runtime dynamic quantisation)",
           "int4": "MatMulNBits (an ONNX Runtime contrib operator)"}
    for graph in ("vision", "decoder"):
        precision = graph_precision(manifest, graph)
        if precision in ops:
            raise BundleError(
                f"the bundle's {graph} graph is {precision!r} and uses {ops[precision]}, which TensorRT cannot parse; "
                "export the bundle with --precision fp16 (or fp32) for TensorRT"
            )
        if precision not in ("fp32", "fp16"):
            raise BundleError(f"the bundle's {graph} graph precision {precision!r} is unknown "
                              "(expected fp32, fp16, int8 or int4)")


def check_precision(opts: BuildOptions, device: DeviceInfo, trt_version: str, bundle_precision: str) -> None:
    """Refuse flags the GPU or this TensorRT cannot honour, before any long build."""
    if _version_tuple(trt_version) < (10,):
        raise BackendError(
            f"TensorRT {trt_version} is too old: the graphs' int64 inputs need TensorRT 10 or newer "
            "(JetPack 6.1+ on Jetson)"
        )
    cc = tuple(device.compute_capability)
    low = min_compute_capability(trt_version)
    cc_text = f"{cc[0]}.{cc[1]}"
    if cc < low:
        raise BackendError(
            f"{device.name} (compute capability {cc_text}) is not supported by TensorRT {trt_version}, which needs "
            f"{low[0]}.{low[1]} or newer"
        )
    asked = [("--fp16", opts.fp16, MIN_CC_FP16), ("--int8", opts.int8, MIN_CC_INT8), ("--fp8", opts.fp8, MIN_CC_FP8)]
    for flag, wanted, need in asked:
        if wanted and cc < need:
            raise BackendError(
                f"{flag}: {device.name} (compute capability {cc_text}) has no {flag[2:]} support; it needs compute "
                f"capability {need[0]}.{need[1]} or newer (fp8: Ada/Hopper and later; Jetson Orin is 8.7)"
            )
    if opts.fp16 and bundle_precision == "fp32" and _version_tuple(trt_version) >= (11,):
        raise BackendError(
            f"--fp16 on an fp32 bundle needs TensorRT's weakly typed mode, removed in TensorRT {trt_version}; "
            "export the bundle with --precision fp16 instead (its casts keep the overflow-prone layers fp32)"
        )


def strongly_typed(opts: BuildOptions, bundle_precision: str) -> bool:
    """Strong typing follows the graph's own types: fp16 bundles already carry their fp32 islands. Only an fp32
    bundle asked for --fp16 needs weak typing (TensorRT picks precisions; we pin the overflow-prone layers)."""
    return not (opts.fp16 and bundle_precision == "fp32")


def check_quantization(opts: BuildOptions, int8_quantize: int, fp8_quantize: int, graph: str) -> None:
    """--int8/--fp8 need explicit quantisation (Q/DQ nodes) in the graph: calibration is deprecated in TensorRT 10."""
    for flag, wanted, count in (("--int8", opts.int8, int8_quantize), ("--fp8", opts.fp8, fp8_quantize)):
        if wanted and count == 0:
            raise BundleError(
                f"{flag}: the {graph} graph has no {flag[2:]} QuantizeLinear/DequantizeLinear nodes. TensorRT 10 "
                "builds int8/fp8 only from explicitly quantised graphs (implicit calibration is deprecated); export "
                "a Q/DQ graph (e.g. with NVIDIA ModelOpt) or drop the flag"
            )


_VISION_MLP = re.compile(r"blocks[./_](\d+)[./_](?:mlp|ffn)", re.IGNORECASE)


def vision_fp32_layers(layer_names: list[str], depth: int, tail_blocks: int) -> list[int]:
    """Indices of the layers to pin to fp32: the MLP of the last `tail_blocks` vision blocks, matched by name."""
    first = depth - tail_blocks
    picked = []
    for i, name in enumerate(layer_names):
        match = _VISION_MLP.search(name or "")
        if match and int(match.group(1)) >= first:
            picked.append(i)
    return picked
