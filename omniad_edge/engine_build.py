"""Build TensorRT engines for a bundle: `omniad-edge build-engine BUNDLE [...]` (docs/TENSORRT.md).

The planning half (limits, optimisation profiles, precision rules, memory estimate, build record) is pure Python
and runs anywhere, so every rule is tested without a GPU. Only `build_engines` needs TensorRT and a CUDA device;
tensorrt is imported inside it. Engines and `build.json` land in the bundle's `tensorrt/` folder; the backend
(backends/tensorrt.py) uses them only when the record matches the running device and TensorRT version.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ._version import __version__
from .bundle import sha256_file
from .errors import BackendError, BundleError

ENGINE_DIR = "tensorrt"
RECORD = "build.json"
RECORD_FORMAT = "omniad-edge-tensorrt"
RECORD_VERSION = 1
ENGINE_FILES = {"vision": "vision.engine", "decoder": "decoder.engine"}

VISION_INPUTS = ("pixel_values", "rotary_pos_ids", "window_index", "reverse_window_index", "window_segments",
                 "image_segments")
VISION_OUTPUT = "image_embeds"
FP32, INT64 = 4, 8  # bytes; graph I/O is float32 and int64 for every bundle precision (DESIGN.md)

# Precision support by compute capability (CUDA docs / TensorRT support matrix).
MIN_CC_FP16 = (5, 3)
MIN_CC_INT8 = (6, 1)
MIN_CC_FP8 = (8, 9)
# Qwen2.5-VL-3B's last vision block MLP overflows fp16 (FACTS.md); pin the tail blocks' MLP to fp32 under --fp16.
DEFAULT_VISION_FP32_BLOCKS = 2
# CUDA context + TensorRT/cuBLAS kernels resident per process; measured figures vary, this is a planning margin.
RUNTIME_OVERHEAD = 512 << 20
MAX_BATCH = 64


@dataclass(frozen=True)
class BuildOptions:
    """What the user asked for; None means "derive from the manifest"."""

    fp16: bool = False
    int8: bool = False
    fp8: bool = False
    tf32: bool = False
    max_image_tokens: int | None = None
    max_images: int | None = None
    max_seq_len: int | None = None
    max_prefill: int | None = None
    batch: int = 1
    workspace_gb: float | None = None
    timing_cache: str | None = None
    vision_fp32_blocks: int | None = None  # None: min(DEFAULT_VISION_FP32_BLOCKS, depth)
    device: int = 0
    skip_memory_check: bool = False


@dataclass(frozen=True)
class Limits:
    """Resolved shape limits the engines are built for; the backend sizes every buffer from these."""

    batch: int
    max_image_tokens: int
    max_images: int
    max_seq_len: int
    max_prefill: int


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    compute_capability: tuple[int, int]
    total_memory: int
    free_memory: int
    integrated: bool = False  # Jetson: GPU and CPU share one memory
    index: int = 0


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


# ---------------------------------------------------------------------------------------------------------------
# Limits and profiles (pure)


def _model(manifest: dict) -> dict:
    return manifest["model"]


def merge_unit(manifest: dict) -> int:
    """Patches per LLM image token (merge_size squared)."""
    pre = manifest["preprocess"]
    return int(pre.get("merge_size", _model(manifest)["vision"].get("spatial_merge_size", 2))) ** 2


def image_token_cap(manifest: dict) -> int:
    """Most image tokens one frame can produce after the manifest's smart-resize rule."""
    pre = manifest["preprocess"]
    if pre.get("max_image_tokens"):
        return int(pre["max_image_tokens"])
    side = int(pre["patch_size"]) * int(pre["merge_size"])
    return max(1, int(pre["max_pixels"]) // (side * side))


def _positive_int(value: Any, flag: str, *, low: int = 1, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{flag} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        span = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{flag} must be {span}, got {value}")
    return value


def resolve_limits(manifest: dict, opts: BuildOptions) -> Limits:
    """Turn the options into concrete limits, refusing values the runtime can never use."""
    batch = _positive_int(opts.batch, "--batch", high=MAX_BATCH)
    cap = image_token_cap(manifest)
    tokens = cap if opts.max_image_tokens is None else _positive_int(opts.max_image_tokens, "--max-image-tokens")
    if tokens > cap:
        raise ValueError(
            f"--max-image-tokens {tokens} exceeds the bundle's limit of {cap} image tokens per frame "
            "(preprocess.max_image_tokens / max_pixels); the runtime never produces more"
        )
    images = batch if opts.max_images is None else _positive_int(opts.max_images, "--max-images", high=MAX_BATCH)
    max_position = int(_model(manifest).get("max_position", 32768))
    minimum = tokens + 16  # one frame plus a minimal prompt
    if opts.max_seq_len is None:
        seq = min(max_position, 256 * math.ceil((tokens + 512) / 256))
    else:
        seq = _positive_int(opts.max_seq_len, "--max-seq-len", high=max_position)
    if seq < minimum:
        raise ValueError(
            f"--max-seq-len {seq} cannot hold one frame of {tokens} image tokens plus the prompt; use >= {minimum} "
            "or lower --max-image-tokens"
        )
    prefill = seq if opts.max_prefill is None else _positive_int(opts.max_prefill, "--max-prefill", high=seq)
    if prefill < tokens:
        raise ValueError(f"--max-prefill {prefill} is shorter than one frame's {tokens} image tokens")
    if opts.workspace_gb is not None and not (isinstance(opts.workspace_gb, (int, float)) and opts.workspace_gb > 0):
        raise ValueError(f"--workspace-gb must be a positive number, got {opts.workspace_gb!r}")
    vision_tail_blocks(manifest, opts)
    return Limits(batch=batch, max_image_tokens=tokens, max_images=images, max_seq_len=seq, max_prefill=prefill)


def vision_tail_blocks(manifest: dict, opts: BuildOptions) -> int:
    """How many last vision blocks keep their MLP in fp32 under --fp16."""
    depth = int(_model(manifest)["vision"].get("depth", 0))
    if opts.vision_fp32_blocks is None:
        return min(DEFAULT_VISION_FP32_BLOCKS, depth)
    return _positive_int(opts.vision_fp32_blocks, "--vision-fp32-blocks", low=0, high=depth)


Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]  # input name -> (min, opt, max)


def vision_profile(manifest: dict, limits: Limits) -> Profile:
    """One profile over the patch count N = merge_unit * image tokens (every image of one vision call)."""
    pre = manifest["preprocess"]
    channels = 3 * int(pre["temporal_patch_size"]) * int(pre["patch_size"]) ** 2
    unit = merge_unit(manifest)
    n = (unit, unit * limits.max_image_tokens, unit * limits.max_image_tokens * limits.max_images)
    merged = tuple(x // unit for x in n)
    per_patch = {"pixel_values": (channels,), "rotary_pos_ids": (2,), "window_segments": (), "image_segments": ()}
    profile: Profile = {}
    for name in VISION_INPUTS:
        if name in per_patch:
            profile[name] = tuple((x, *per_patch[name]) for x in n)
        else:  # window_index, reverse_window_index: one entry per merged token
            profile[name] = tuple((x,) for x in merged)
    return profile


def decoder_input_names(manifest: dict) -> list[str]:
    layers = int(_model(manifest)["num_layers"])
    names = ["inputs_embeds", "position_ids", "attention_mask"]
    for i in range(layers):
        names += [f"past_key.{i}", f"past_value.{i}"]
    return names


def decoder_output_names(manifest: dict) -> list[str]:
    names = ["logits"]
    for i in range(int(_model(manifest)["num_layers"])):
        names += [f"new_key.{i}", f"new_value.{i}"]
    return names


def decoder_profiles(manifest: dict, limits: Limits) -> list[Profile]:
    """[prefill, decode]. The past length reaches max_seq_len in both: batches (and CUDA-graph decode) bind the
    whole cache with unused slots masked off, so shapes stay fixed (see backends/tensorrt.py, plan_step)."""
    model = _model(manifest)
    hidden, kvh, hd = int(model["hidden_size"]), int(model["num_key_value_heads"]), int(model["head_dim"])
    b = (1, 1, limits.batch)
    cap = limits.max_seq_len
    s_opt = min(limits.max_prefill, limits.max_image_tokens + 128)
    p_opt = min(cap, s_opt + 128)
    prefill = {"s": (1, s_opt, limits.max_prefill), "p": (0, 0, cap), "m": (1, s_opt, cap + limits.max_prefill)}
    decode = {"s": (1, 1, 1), "p": (0, p_opt, cap), "m": (1, p_opt + 1, cap + 1)}
    profiles = []
    for dims in (prefill, decode):
        s, p, m = dims["s"], dims["p"], dims["m"]
        profile: Profile = {
            "inputs_embeds": tuple((b[k], s[k], hidden) for k in range(3)),
            "position_ids": tuple((3, b[k], s[k]) for k in range(3)),
            "attention_mask": tuple((b[k], m[k]) for k in range(3)),
        }
        for i in range(int(model["num_layers"])):
            kv = tuple((b[k], p[k], kvh, hd) for k in range(3))
            profile[f"past_key.{i}"] = kv
            profile[f"past_value.{i}"] = kv
        profiles.append(profile)
    return profiles


def profiles_to_json(profiles: list[Profile]) -> list[dict]:
    return [{name: [list(s) for s in shapes] for name, shapes in p.items()} for p in profiles]


# ---------------------------------------------------------------------------------------------------------------
# Buffers and memory (pure)


def _volume(shape: Shape) -> int:
    return math.prod(shape) if shape else 1


def kv_cache_bytes(manifest: dict, limits: Limits) -> int:
    """One float32 (B, max_seq_len, kv_heads, head_dim) buffer per layer for keys and one for values."""
    model = _model(manifest)
    per = limits.batch * limits.max_seq_len * int(model["num_key_value_heads"]) * int(model["head_dim"]) * FP32
    return 2 * int(model["num_layers"]) * per


def kv_scratch_bytes(manifest: dict, limits: Limits) -> int:
    """Batches > 1 receive the new keys/values in a scratch buffer (then a strided copy into the cache)."""
    if limits.batch == 1:
        return 0
    model = _model(manifest)
    per = limits.batch * limits.max_prefill * int(model["num_key_value_heads"]) * int(model["head_dim"]) * FP32
    return 2 * int(model["num_layers"]) * per


def io_buffer_plan(manifest: dict, limits: Limits) -> dict[str, int]:
    """Bytes of every device I/O buffer the backend allocates once (excluding the KV cache)."""
    model = _model(manifest)
    vis = vision_profile(manifest, limits)
    plan = {}
    for name, (_, _, high) in vis.items():
        plan[f"vision.{name}"] = _volume(high) * (FP32 if name == "pixel_values" else INT64)
    n_max = vis["pixel_values"][2][0]
    out_hidden = int(model["vision"].get("out_hidden_size", model["hidden_size"]))
    plan[f"vision.{VISION_OUTPUT}"] = n_max // merge_unit(manifest) * out_hidden * FP32
    prefill = decoder_profiles(manifest, limits)[0]
    for name in ("inputs_embeds", "position_ids", "attention_mask"):
        plan[f"decoder.{name}"] = _volume(prefill[name][2]) * (FP32 if name == "inputs_embeds" else INT64)
    plan["decoder.logits"] = limits.batch * int(model["vocab_size"]) * FP32
    return plan


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
    model, vision = _model(manifest), _model(manifest)["vision"]
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


# ---------------------------------------------------------------------------------------------------------------
# Precision rules (pure)


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


# ---------------------------------------------------------------------------------------------------------------
# Build record (pure)


def manifest_sha256(root: Path) -> str:
    return hashlib.sha256((Path(root) / "manifest.json").read_bytes()).hexdigest()


def make_record(*, trt_version: str, device: DeviceInfo, opts: BuildOptions, limits: Limits, manifest_sha: str,
                bundle_name: str, profiles: dict, engines: dict, precision: dict, build_seconds: float) -> dict:
    return {
        "format": RECORD_FORMAT,
        "format_version": RECORD_VERSION,
        "omniad_edge": __version__,
        "tensorrt": trt_version,
        "device": {"name": device.name, "compute_capability": list(device.compute_capability),
                   "integrated": device.integrated, "total_memory": device.total_memory},
        "flags": {"fp16": opts.fp16, "int8": opts.int8, "fp8": opts.fp8, "tf32": opts.tf32,
                  "workspace_gb": opts.workspace_gb, **precision},
        "limits": asdict(limits),
        "profiles": profiles,
        "bundle": {"name": bundle_name, "manifest_sha256": manifest_sha},
        "engines": engines,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(build_seconds, 1),
    }


def record_limits(record: dict) -> Limits:
    return Limits(**{k: int(v) for k, v in record["limits"].items()})


def read_record(root: Path) -> dict:
    path = Path(root) / ENGINE_DIR / RECORD
    if not path.is_file():
        raise BackendError(
            f"bundle {root} has no TensorRT engines ({ENGINE_DIR}/{RECORD} is missing); build them on this device "
            f"with: omniad-edge build-engine {root}"
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BackendError(f"{path} is not valid JSON ({exc}); rebuild with: omniad-edge build-engine {root}") from None
    return record


def check_record(record: dict, *, trt_version: str, device: DeviceInfo, manifest_sha: str,
                 root: Path | str = "BUNDLE") -> None:
    """Engines run only on the device model and TensorRT version they were built with, for the same bundle."""
    rebuild = f"rebuild them on this device with: omniad-edge build-engine {root}"
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise BackendError(f"{root}/{ENGINE_DIR}/{RECORD} is not a TensorRT build record; {rebuild}")
    if record.get("format_version") != RECORD_VERSION:
        raise BackendError(f"build record format_version {record.get('format_version')!r} is not supported; {rebuild}")
    built = record.get("tensorrt")
    if built != trt_version:
        raise BackendError(f"the engines were built with TensorRT {built}, this runtime has TensorRT {trt_version}; "
                           f"{rebuild}")
    dev = record.get("device", {})
    cc = tuple(dev.get("compute_capability", ()))
    if cc != tuple(device.compute_capability) or dev.get("name") != device.name:
        have = f"{device.name} (compute capability {device.compute_capability[0]}.{device.compute_capability[1]})"
        want = f"{dev.get('name')} (compute capability {'.'.join(str(x) for x in cc)})"
        raise BackendError(f"the engines were built for {want}, this device is {have}; {rebuild}")
    if record.get("bundle", {}).get("manifest_sha256") != manifest_sha:
        raise BackendError(f"the engines were built from another version of this bundle (manifest changed); {rebuild}")
    for name in ENGINE_FILES:
        if name not in record.get("engines", {}):
            raise BackendError(f"the build record lists no {name} engine; {rebuild}")


# ---------------------------------------------------------------------------------------------------------------
# The build (needs TensorRT + CUDA)


def _import_tensorrt():
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendError(
            "TensorRT's Python package is not installed (import tensorrt failed: "
            f"{exc}). On Jetson it comes with JetPack (apt install python3-libnvinfer); on x86-64 Linux: "
            "pip install tensorrt (see docs/TENSORRT.md)"
        ) from None
    return tensorrt


def _progress_monitor(trt, log: Callable[[str], None], label: str):
    """An IProgressMonitor subclass (TensorRT >= 8.6) printing top-level phases; None where unavailable."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class Monitor(base):
        def __init__(self):
            base.__init__(self)
            self._steps: dict[str, int] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self._steps[phase_name] = num_steps
            if parent_phase is None:
                log(f"[{label}] {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            total = self._steps.get(phase_name, 0)
            if total >= 10 and (step + 1) % max(1, total // 10) == 0:
                log(f"[{label}]   {phase_name}: {step + 1}/{total}")
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            self._steps.pop(phase_name, None)

    return Monitor()


def _count_quantize_layers(trt, network) -> tuple[int, int]:
    int8 = fp8 = 0
    quantize = getattr(trt.LayerType, "QUANTIZE", None)
    fp8_type = getattr(trt.DataType, "FP8", None)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if quantize is None or layer.type != quantize:
            continue
        out_type = getattr(layer, "to_type", None) or layer.get_output(0).dtype
        if fp8_type is not None and out_type == fp8_type:
            fp8 += 1
        else:
            int8 += 1
    return int8, fp8


def _build_one(trt, builder, logger, *, graph: str, onnx_path: Path, profiles: list[Profile], opts: BuildOptions,
               strong: bool, timing_cache, manifest: dict, log: Callable[[str], None]):
    """Parse one ONNX graph and build its serialized engine; returns (bytes-like, precision notes)."""
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strong else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    log(f"[{graph}] parsing {onnx_path.name}")
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BundleError(f"TensorRT cannot parse {onnx_path}: {errors}")

    inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    expected = set(profiles[0])
    if inputs != expected:
        raise BundleError(
            f"{onnx_path.name} does not follow the graph contract (docs/DESIGN.md): missing inputs "
            f"{sorted(expected - inputs)}, unexpected inputs {sorted(inputs - expected)}"
        )
    check_quantization(opts, *_count_quantize_layers(trt, network), graph)

    config = builder.create_builder_config()
    notes: dict[str, Any] = {f"{graph}_strongly_typed": strong}
    if opts.workspace_gb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_gb * (1 << 30)))
    if not opts.tf32:
        config.clear_flag(trt.BuilderFlag.TF32)  # keep fp32 builds at fp32 accuracy, matching ONNX Runtime
    if not strong:
        if opts.fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        if opts.int8:
            config.set_flag(trt.BuilderFlag.INT8)
        if opts.fp8:
            config.set_flag(trt.BuilderFlag.FP8)
        if graph == "vision" and opts.fp16:
            notes["vision_fp32_layers"] = _pin_vision_fp32(trt, network, config, manifest, opts, log)
    if timing_cache is not None:
        config.set_timing_cache(timing_cache, False)
    monitor = _progress_monitor(trt, log, graph)
    if monitor is not None:
        config.progress_monitor = monitor
    for profile in profiles:
        trt_profile = builder.create_optimization_profile()
        for name, (low, opt, high) in profile.items():
            trt_profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(trt_profile)

    log(f"[{graph}] building engine (this takes minutes; progress follows)")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"TensorRT could not build the {graph} engine (see its log above)")
    return serialized, notes


def _pin_vision_fp32(trt, network, config, manifest: dict, opts: BuildOptions, log) -> int | str:
    """Keep the overflow-prone vision MLPs in fp32; if their names cannot be found, keep the whole tower fp32."""
    depth = int(_model(manifest)["vision"].get("depth", 0))
    tail = vision_tail_blocks(manifest, opts)
    names = [network.get_layer(i).name for i in range(network.num_layers)]
    picked = vision_fp32_layers(names, depth, tail)
    if tail and not picked:
        log("[vision] the tail blocks' MLP layers could not be found by name; keeping the vision engine fp32 "
            "(export an fp16 bundle to get fp16 with fp32 islands)")
        config.clear_flag(trt.BuilderFlag.FP16)
        return "all"
    for i in picked:
        layer = network.get_layer(i)
        layer.precision = trt.float32
        for k in range(layer.num_outputs):
            layer.set_output_type(k, trt.float32)
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    log(f"[vision] {len(picked)} layers of the last {tail} blocks' MLP pinned to fp32")
    return len(picked)


def plan(bundle, opts: BuildOptions, *, device: DeviceInfo | None = None) -> dict:
    """Everything decided before TensorRT is touched: limits, profiles, memory estimate (the --dry-run output)."""
    manifest = bundle.manifest
    check_bundle_precision(manifest)
    limits = resolve_limits(manifest, opts)
    estimate = estimate_memory(manifest, limits, fp16=opts.fp16, integrated=bool(device and device.integrated),
                               root=bundle.root)
    return {
        "bundle": str(bundle.root),
        "precision": manifest.get("precision", "fp32"),
        "strongly_typed": {g: strongly_typed(opts, graph_precision(manifest, g)) for g in ("vision", "decoder")},
        "limits": asdict(limits),
        "profiles": {"vision": profiles_to_json([vision_profile(manifest, limits)]),
                     "decoder": profiles_to_json(decoder_profiles(manifest, limits))},
        "memory_estimate": {"total": estimate.total, "weights": estimate.weights, "kv_cache": estimate.kv_cache,
                            "activations": estimate.activations, "io_buffers": estimate.io_buffers,
                            "host_embeddings": estimate.host_embeddings, "overhead": estimate.overhead,
                            **estimate.parts},
        "memory_text": estimate.describe(),
    }


def build_engines(bundle_path, opts: BuildOptions, *, log: Callable[[str], None] | None = None,
                  trt=None, cuda=None) -> dict:
    """Build vision + decoder engines into BUNDLE/tensorrt and return the build record.

    `trt`/`cuda` replace the tensorrt module and the CUDA runtime wrapper (tests inject fakes). All checks that can
    fail run before the first (slow) engine build.
    """
    from .bundle import load_bundle

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    started = time.monotonic()
    trt = trt or _import_tensorrt()  # fail fast, before hashing gigabytes of weights
    bundle = load_bundle(bundle_path)
    manifest = bundle.manifest
    check_bundle_precision(manifest)
    limits = resolve_limits(manifest, opts)

    if cuda is None:
        from .backends.tensorrt import load_cuda

        cuda = load_cuda()
    device = cuda.device_info(opts.device)
    check_precision(opts, device, trt.__version__, graph_precision(manifest, "decoder"))
    estimate = estimate_memory(manifest, limits, fp16=opts.fp16, integrated=device.integrated, root=bundle.root)
    log(f"device {device.name} (compute capability {device.compute_capability[0]}.{device.compute_capability[1]}), "
        f"TensorRT {trt.__version__}; runtime memory estimate {estimate.describe()}")
    if not opts.skip_memory_check:
        check_memory(estimate, device)

    out = bundle.root / ENGINE_DIR
    out.mkdir(exist_ok=True)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    cache = None
    cache_path = Path(opts.timing_cache) if opts.timing_cache else None
    if cache_path is not None:
        probe = builder.create_builder_config()
        data = cache_path.read_bytes() if cache_path.is_file() else b""
        cache = probe.create_timing_cache(data)
        if data and not probe.set_timing_cache(cache, False):
            log(f"timing cache {cache_path} is from another device or TensorRT version; starting a new one")
            cache = probe.create_timing_cache(b"")
        else:
            log(f"timing cache {cache_path} ({'loaded' if data else 'new'})")

    graphs = {"vision": (bundle.vision_path, [vision_profile(manifest, limits)]),
              "decoder": (bundle.decoder_path, decoder_profiles(manifest, limits))}
    engines, notes = {}, {}
    pid = os.getpid()
    for graph, (onnx_path, profiles) in graphs.items():
        t0 = time.monotonic()
        strong = strongly_typed(opts, graph_precision(manifest, graph))
        serialized, note = _build_one(trt, builder, logger, graph=graph, onnx_path=onnx_path, profiles=profiles,
                                      opts=opts, strong=strong, timing_cache=cache, manifest=manifest, log=log)
        tmp = out / f".{ENGINE_FILES[graph]}.{pid}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(memoryview(serialized))
        del serialized
        notes.update(note)
        engines[graph] = {"path": ENGINE_FILES[graph], "sha256": sha256_file(tmp), "bytes": tmp.stat().st_size,
                          "build_seconds": round(time.monotonic() - t0, 1), "_tmp": tmp}
        log(f"[{graph}] engine {engines[graph]['bytes'] / (1 << 20):.1f} MiB in {engines[graph]['build_seconds']} s")

    if cache is not None and cache_path is not None:
        tmp_cache = cache_path.with_name(f".{cache_path.name}.{pid}.tmp")
        tmp_cache.write_bytes(memoryview(cache.serialize()))
        os.replace(tmp_cache, cache_path)

    # Engines first, the record last: a record on disk means a complete build.
    record_path = out / RECORD
    record_path.unlink(missing_ok=True)
    for graph, info in engines.items():
        os.replace(info.pop("_tmp"), out / info["path"])
    record = make_record(trt_version=trt.__version__, device=device, opts=opts, limits=limits,
                         manifest_sha=manifest_sha256(bundle.root), bundle_name=bundle.name,
                         profiles={g: profiles_to_json(p) for g, (_, p) in graphs.items()}, engines=engines,
                         precision=notes, build_seconds=time.monotonic() - started)
    tmp = out / f".{RECORD}.{pid}.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, record_path)
    log(f"wrote {out}/ ({', '.join(e['path'] for e in engines.values())}, {RECORD})")
    return record


# ---------------------------------------------------------------------------------------------------------------
# CLI hooks: cli.py calls add_parser(subparsers) and main(args)


def _int_arg(flag: str, low: int = 1):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{flag} must be >= {low}, got {value}")
        return value
    return parse


def _gb_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--workspace-gb expects a number of GiB, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"--workspace-gb must be a positive number of GiB, got {text!r}")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "build-engine", help="build TensorRT engines for a bundle on this device",
        description="Build TensorRT engines (vision + decoder) into BUNDLE/tensorrt/ with a build record. "
                    "Engines run only on the GPU model and TensorRT version they were built with.")
    p.add_argument("bundle", metavar="BUNDLE", help="bundle directory (holds manifest.json)")
    p.add_argument("--fp16", action="store_true", help="fp16 kernels for an fp32 bundle (fp16 bundles are fp16 "
                   "already)")
    p.add_argument("--int8", action="store_true", help="int8 kernels for an explicitly quantised (Q/DQ) graph")
    p.add_argument("--fp8", action="store_true", help="fp8 kernels for a Q/DQ graph (compute capability >= 8.9)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls in fp32 layers (off: match ONNX Runtime)")
    p.add_argument("--max-image-tokens", type=_int_arg("--max-image-tokens"), help="image tokens per frame "
                   "(default: the bundle's limit); vision attention memory grows with its square")
    p.add_argument("--max-images", type=_int_arg("--max-images"), help="frames per vision call (default: --batch)")
    p.add_argument("--max-seq-len", type=_int_arg("--max-seq-len"), help="prompt + generated tokens (KV cache size)")
    p.add_argument("--max-prefill", type=_int_arg("--max-prefill"), help="tokens per prefill call (default: "
                   "max-seq-len)")
    p.add_argument("--batch", type=_int_arg("--batch"), default=1, help="frames per batch (default 1)")
    p.add_argument("--workspace-gb", type=_gb_arg, help="TensorRT tactic workspace limit in GiB")
    p.add_argument("--timing-cache", metavar="F", help="timing cache file, read if present and "
                   "updated (faster rebuilds)")
    p.add_argument("--vision-fp32-blocks", type=_int_arg("--vision-fp32-blocks", 0),
                   help=f"with --fp16: last vision blocks whose MLP stays fp32 (default {DEFAULT_VISION_FP32_BLOCKS})")
    p.add_argument("--device", type=_int_arg("--device", 0), default=0, help="CUDA device index")
    p.add_argument("--skip-memory-check", action="store_true", help="build even if the estimate exceeds free memory")
    p.add_argument("--dry-run", action="store_true", help="print limits, profiles and memory estimate; build nothing")
    p.set_defaults(func=main, handler=main)
    return p


def options_from_args(args: argparse.Namespace) -> BuildOptions:
    return BuildOptions(
        fp16=args.fp16, int8=args.int8, fp8=args.fp8, tf32=args.tf32, max_image_tokens=args.max_image_tokens,
        max_images=args.max_images, max_seq_len=args.max_seq_len, max_prefill=args.max_prefill, batch=args.batch,
        workspace_gb=args.workspace_gb, timing_cache=args.timing_cache, vision_fp32_blocks=args.vision_fp32_blocks,
        device=args.device, skip_memory_check=args.skip_memory_check)


def main(args: argparse.Namespace | list[str] | None = None) -> int:
    """Run build-engine; returns 0 on success, 2 on bad input, 1 when TensorRT/the device fails."""
    if not isinstance(args, argparse.Namespace):
        parser = argparse.ArgumentParser(prog="omniad-edge")
        add_parser(parser.add_subparsers(dest="command", required=True))
        argv = list(sys.argv[1:] if args is None else args)
        args = parser.parse_args(argv if argv[:1] == ["build-engine"] else ["build-engine", *argv])
    opts = options_from_args(args)
    try:
        if args.dry_run:
            from .bundle import load_bundle

            print(json.dumps(plan(load_bundle(args.bundle), opts), indent=2))
            return 0
        build_engines(args.bundle, opts)
    except (BundleError, ValueError) as exc:
        print(f"omniad-edge build-engine: error: {exc}", file=sys.stderr)
        return 2
    except BackendError as exc:
        print(f"omniad-edge build-engine: error: {exc}", file=sys.stderr)
        return 1
    return 0


__all__ = ["BuildOptions", "Limits", "DeviceInfo", "MemoryEstimate", "resolve_limits", "vision_profile",
           "decoder_profiles", "estimate_memory", "check_memory", "check_precision", "check_bundle_precision",
           "check_quantization", "check_record", "read_record", "make_record", "record_limits", "build_engines",
           "plan", "add_parser", "main"]
