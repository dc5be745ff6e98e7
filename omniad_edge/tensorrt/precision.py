"""Precision rules, pure Python: which flags a GPU and a TensorRT version can honour, which bundles TensorRT can
parse, when a network is strongly typed, and which layers stay fp32 when TensorRT 10 picks precisions (--fp16 on a
float32 graph): the tail vision MLPs, the rotary angles and the norms.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..contract import bundle_target
from ..errors import BackendError, BundleError
from .cuda import DeviceInfo
from .limits import BuildOptions

__all__ = ["check_precision", "check_bundle_target", "check_bundle_precision", "check_quantization", "strongly_typed",
           "graph_precision", "graph_precisions", "weak_typing_available", "min_compute_capability", "LayerInfo", "vision_fp32_layers",
           "rotary_fp32_layers", "norm_fp32_layers"]


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


def graph_precisions(manifest: dict) -> dict[str, str]:
    return {graph: graph_precision(manifest, graph) for graph in GRAPHS}


GRAPHS = ("vision", "decoder")
# Graphs whose activations are float32 (int4 "qdq" dequantizes its weights to float32): --fp16 lowers them only
# through TensorRT 10's weak typing.
FLOAT32_ACTIVATIONS = ("fp32", "int4")


def check_bundle_target(manifest: dict) -> None:
    """Refuse a bundle exported for ONNX Runtime (export --target ort): its decoder is built on GroupQueryAttention
    and other contrib operators that TensorRT's parser does not know. Bundles without a target (exported before
    targets existed) pass on to the per-graph checks."""
    target = bundle_target(manifest)
    if target is not None and target != "tensorrt":
        raise BundleError(
            f"the bundle was exported for target {target!r} (ONNX Runtime's fused contrib operators: "
            f"{', '.join(manifest['graphs']['decoder'].get('contrib_ops', [])) or 'GroupQueryAttention'}), which "
            "TensorRT cannot parse; re-export it with --target tensorrt, or run it with backend='onnxruntime'")


def check_bundle_precision(manifest: dict) -> None:
    """Refuse graphs TensorRT's ONNX parser cannot import, with the reason (onnx-tensorrt docs/operators.md)."""
    check_bundle_target(manifest)
    for graph in GRAPHS:
        precision = graph_precision(manifest, graph)
        if precision == "int8":
            raise BundleError(
                f"the bundle's {graph} graph is 'int8' and uses MatMulInteger/DynamicQuantizeLinear (ONNX Runtime "
                "dynamic quantisation), which TensorRT cannot parse; export the bundle with --precision fp16 (or "
                "fp32) for TensorRT")
        if precision == "int4":
            int4 = manifest["graphs"][graph].get("int4", {})
            if int4.get("format", "matmulnbits") != "qdq":
                raise BundleError(
                    f"the bundle's {graph} graph is 'int4' and uses MatMulNBits (an ONNX Runtime contrib operator), "
                    "which TensorRT cannot parse; export with --int4-format qdq (DequantizeLinear + MatMul) or "
                    "--precision fp16 for TensorRT")
            if not int4.get("symmetric", True):
                raise BundleError(
                    f"the bundle's {graph} graph holds asymmetric int4 weights (non-zero zero points); TensorRT's "
                    "DequantizeLinear takes symmetric quantisation only: export without asymmetric int4")
        elif precision not in ("fp32", "fp16"):
            raise BundleError(f"the bundle's {graph} graph precision {precision!r} is unknown "
                              "(expected fp32, fp16, int8 or int4)")
    fused = sorted({f for f in manifest["graphs"]["vision"].get("attention", {}).values() if f != "plain"})
    if fused:
        raise BundleError(f"the bundle's vision graph uses {', '.join(fused)} (an ONNX Runtime contrib operator), "
                          "which TensorRT cannot parse; export with --vision-attention plain for TensorRT")


def weak_typing_available(trt_version: str) -> bool:
    """TensorRT 11 removed weak typing (precision flags, layer precisions): every network is strongly typed."""
    return _version_tuple(trt_version) < (11,)


def check_precision(opts: BuildOptions, device: DeviceInfo, trt_version: str, precisions: dict[str, str]) -> None:
    """Refuse flags the GPU or this TensorRT cannot honour for any of the graphs (`precisions`: graph ->
    precision), before any long build."""
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
    if not weak_typing_available(trt_version):
        for graph, precision in precisions.items():
            if opts.fp16 and precision in FLOAT32_ACTIVATIONS:
                raise BackendError(
                    f"--fp16 on the {precision} {graph} graph needs TensorRT's weakly typed mode, removed in TensorRT "
                    f"{trt_version} (every network is strongly typed); export the bundle with --precision fp16 "
                    "instead (its casts keep the overflow-prone layers fp32), or drop --fp16 to build the graphs "
                    "as they are typed")


def strongly_typed(opts: BuildOptions, precision: str, trt_version: str = "10") -> bool:
    """Strong typing follows the graph's own types, and is the default for every precision: fp16 bundles already
    carry their fp32 islands. Only --fp16 on a graph with float32 activations needs weak typing (TensorRT 10 picks
    precisions; the overflow-prone layers are pinned), and TensorRT 11 has no weak typing at all."""
    return not (opts.fp16 and precision in FLOAT32_ACTIVATIONS and weak_typing_available(trt_version))


def check_quantization(opts: BuildOptions, int8_quantize: int, fp8_quantize: int, graph: str) -> None:
    """--int8/--fp8 need explicit quantisation (Q/DQ nodes) in the graph: calibration is deprecated in TensorRT 10."""
    for flag, wanted, count in (("--int8", opts.int8, int8_quantize), ("--fp8", opts.fp8, fp8_quantize)):
        if wanted and count == 0:
            raise BundleError(
                f"{flag}: the {graph} graph has no {flag[2:]} QuantizeLinear/DequantizeLinear nodes. TensorRT 10 "
                "builds int8/fp8 only from explicitly quantised graphs (implicit calibration is deprecated); export "
                "a Q/DQ graph (e.g. with NVIDIA ModelOpt) or drop the flag"
            )


# -- fp32 pins under weak typing (TensorRT 10, --fp16 on a float32 graph) ----------------------------------------
#
# The ONNX parser names a constant layer after its initializer (`blocks.30.mlp.down_proj.weight`) and a compute layer
# after its node (`node_linear_12` in a dynamo export), so compute layers are found by the weights they consume and
# by the producer chain between them, never by their own names.

@dataclass(frozen=True)
class LayerInfo:
    """What the pin rules need of one network layer (build.py reads it from TensorRT's INetworkDefinition)."""

    name: str
    kind: str  # the TensorRT LayerType name: CONSTANT, MATRIX_MULTIPLY, ELEMENTWISE, REDUCE, UNARY, SHUFFLE, ...
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    float_output: bool = True  # only layers producing floating-point tensors can be pinned to fp32


_MLP_WEIGHT = re.compile(r"blocks[./_](\d+)[./_](?:mlp|ffn)[./_]", re.IGNORECASE)
_ROTARY_WEIGHT = re.compile(r"inv_freq", re.IGNORECASE)
_WEIGHT_PATH = {"SHUFFLE", "CAST", "IDENTITY", "DEQUANTIZE"}  # between an initializer and the layer using it
_STOP = {"MATRIX_MULTIPLY", "SOFTMAX"}  # where the rotary chain ends at the latest (mrope sums sections: REDUCE)
_NORM_CHAIN = {"ELEMENTWISE", "UNARY", "CAST", "IDENTITY"}


class _Graph:
    def __init__(self, layers: list[LayerInfo]):
        self.layers = layers
        self.producer = {t: i for i, layer in enumerate(layers) for t in layer.outputs}
        self.consumers: dict[str, list[int]] = {}
        for i, layer in enumerate(layers):
            for t in layer.inputs:
                self.consumers.setdefault(t, []).append(i)

    def weight(self, tensor: str, hops: int = 4) -> str | None:
        """The initializer a tensor comes from through reshapes/casts/dequantisation, or None."""
        for _ in range(hops + 1):
            i = self.producer.get(tensor)
            if i is None:
                return None
            layer = self.layers[i]
            if layer.kind == "CONSTANT":
                return layer.name
            if layer.kind not in _WEIGHT_PATH or not layer.inputs:
                return None
            tensor = layer.inputs[0]
        return None

    def weights_of(self, i: int) -> list[str]:
        return [w for w in (self.weight(t) for t in self.layers[i].inputs) if w]

    def next_layers(self, indices) -> set[int]:
        return {j for i in indices for t in self.layers[i].outputs for j in self.consumers.get(t, ())}

    def forward(self, seeds, stop=frozenset()) -> set[int]:
        """The seeds and every layer downstream of them, not going past layers of a kind in `stop`."""
        seen, todo = set(seeds), list(seeds)
        while todo:
            for j in self.next_layers([todo.pop()]) - seen:
                seen.add(j)
                if self.layers[j].kind not in stop:
                    todo.append(j)
        return seen

    def backward(self, seeds) -> set[int]:
        seen, todo = set(seeds), list(seeds)
        while todo:
            for t in self.layers[todo.pop()].inputs:
                j = self.producer.get(t)
                if j is not None and j not in seen and self.layers[j].kind != "CONSTANT":
                    seen.add(j)
                    todo.append(j)
        return seen

    def pinnable(self, indices) -> list[int]:
        return sorted(i for i in indices if self.layers[i].kind != "CONSTANT" and self.layers[i].float_output)


def vision_fp32_layers(layers: list[LayerInfo], depth: int, tail_blocks: int) -> tuple[list[int], list[int]]:
    """The MLPs of the last `tail_blocks` vision blocks: the layers consuming their weights and every layer between
    them (activation, gating). Returns (layer indices, blocks found); a block missing from the second list was not
    found, and the caller keeps the whole tower fp32."""
    graph = _Graph(layers)
    first = depth - tail_blocks
    seeds: dict[int, set[int]] = {}
    for i, layer in enumerate(layers):
        if layer.kind in _WEIGHT_PATH or layer.kind == "CONSTANT":
            continue
        for name in graph.weights_of(i):
            match = _MLP_WEIGHT.search(name)
            if match and first <= int(match.group(1)) < depth:
                seeds.setdefault(int(match.group(1)), set()).add(i)
    picked: set[int] = set()
    for block_seeds in seeds.values():
        picked |= graph.forward(block_seeds) & graph.backward(block_seeds)
    return graph.pinnable(picked), sorted(seeds)


def rotary_fp32_layers(layers: list[LayerInfo]) -> list[int]:
    """Rotary angles: positions x inv_freq (a MatMul, or Mul + ReduceSum over the mrope sections) and everything up
    to the cos/sin (UNARY) layers, plus the casts and reshapes that bring the positions in. fp16 cannot hold
    positions above 2048 exactly, nor their angles."""
    graph = _Graph(layers)
    seeds = {i for i in range(len(layers)) if layers[i].kind not in _WEIGHT_PATH | {"CONSTANT"}
             and any(_ROTARY_WEIGHT.search(w) for w in graph.weights_of(i))}
    picked = graph.forward(seeds, stop=_STOP | {"UNARY"})
    for i in list(picked):  # the position side of the products
        for t in layers[i].inputs:
            j = graph.producer.get(t)
            while j is not None and layers[j].kind in {"CAST", "SHUFFLE"} and j not in picked:
                picked.add(j)
                j = graph.producer.get(layers[j].inputs[0]) if layers[j].inputs else None
    return graph.pinnable(picked)


def norm_fp32_layers(layers: list[LayerInfo], hops: int = 6) -> list[int]:
    """RMSNorm/LayerNorm: every reduction (mean of squares), the elementwise layer squaring its input, and the chain
    after it (add eps, sqrt, divide, scale) up to the next matmul or reduction."""
    graph = _Graph(layers)
    picked: set[int] = set()
    for i, layer in enumerate(layers):
        if layer.kind not in ("REDUCE", "NORMALIZATION"):
            continue
        picked.add(i)
        j = graph.producer.get(layer.inputs[0]) if layer.inputs else None
        if j is not None and layers[j].kind == "ELEMENTWISE":
            picked.add(j)
        frontier = {i}
        for _ in range(hops):
            frontier = {j for j in graph.next_layers(frontier) - picked if layers[j].kind in _NORM_CHAIN}
            picked |= frontier
    return graph.pinnable(picked)
