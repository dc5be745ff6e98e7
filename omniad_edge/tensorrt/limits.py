"""Planning, pure Python: what the user asked for (BuildOptions), the shape limits it resolves to (Limits), the
optimisation profiles, and the bytes of every buffer the backend allocates. Runs anywhere; no TensorRT, no GPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .. import contract
from ..contract import (DECODER_INPUTS, DRAFT_LOGITS, LOGITS, VISION_INPUTS, VISION_OUTPUT,  # noqa: F401
                        vision_input_names)
from ..contract import MAX_ASPECT

__all__ = ["BuildOptions", "Limits", "resolve_limits", "merge_unit", "image_token_cap", "vision_tail_blocks",
           "vision_profile", "decoder_input_names", "decoder_output_names", "decoder_profiles", "profiles_to_json",
           "kv_cache_bytes", "kv_row_bytes", "kv_scratch_seq", "kv_scratch_bytes", "io_buffer_plan", "ALIGNMENT",
           "vision_input_names"]

_PIXELS = VISION_INPUTS[0]
_EMBEDS, _POSITIONS, _MASK = DECODER_INPUTS
ALIGNMENT = 256  # bytes: TensorRT tensor addresses (IExecutionContext::setTensorAddress)
FP32, INT64 = 4, 8  # bytes; graph I/O is float32 and int64 for every bundle precision (DESIGN.md)
# Qwen2.5-VL-3B's last vision block MLP overflows fp16; pin the tail blocks' MLP to fp32 under --fp16.
DEFAULT_VISION_FP32_BLOCKS = 2
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
    per_patch = {_PIXELS: (channels,), "rotary_pos_ids": (2,), "window_segments": (), "image_segments": (),
                 "image_scatter": (), "window_scatter": ()}
    window = int(_model(manifest)["vision"].get("window_size") or 0) // int(pre["patch_size"])
    side = max(1, window // int(math.isqrt(unit)))  # a window's side in merged tokens
    groups = {  # (groups, longest group) of the padded gather tables
        "image_gather": ((1, unit), (1, n[1]), (limits.max_images, n[1])),
        "window_gather": ((1, unit), (max(1, n[1] // max(1, window * window)), window * window),
                          (limits.max_images * max_windows(limits.max_image_tokens, side), window * window)),
    }
    profile: Profile = {}
    for name in vision_input_names(manifest):
        if name in per_patch:
            profile[name] = tuple((x, *per_patch[name]) for x in n)
        elif name in groups:
            profile[name] = groups[name]
        else:  # window_index, reverse_window_index: one entry per merged token
            profile[name] = tuple((x,) for x in merged)
    return profile


def max_windows(tokens: int, side: int) -> int:
    """The most windows one image of at most `tokens` merged tokens can have, windows `side` tokens a side.

    Windows tile the merged grid from its top-left corner, so a thin grid needs the most (a 1 x T grid needs
    ceil(T / side) where a square one needs about T / side^2). Frames are capped at an aspect ratio of
    MAX_ASPECT, and smart_resize rounds each side to the nearest token: a side of `a` tokens comes from fewer
    than a + 0.5 tokens' worth of pixels, so the other side has at most MAX_ASPECT * (a + 0.5) + 0.5 tokens."""
    best = 1
    for a in range(1, tokens + 1):
        b = min(tokens // a, MAX_ASPECT * a + MAX_ASPECT // 2 + 1)
        if b < 1 or a > MAX_ASPECT * b + MAX_ASPECT // 2 + 1:
            continue
        best = max(best, -(-a // side) * -(-b // side))
    return best


def decoder_input_names(manifest: dict) -> list[str]:
    return contract.decoder_input_names(int(_model(manifest)["num_layers"]))


def decoder_output_names(manifest: dict) -> list[str]:
    return contract.decoder_output_names(int(_model(manifest)["num_layers"]),
                                         draft=bool(manifest["graphs"]["decoder"].get("draft_logits")))


def decoder_profiles(manifest: dict, limits: Limits) -> list[Profile]:
    """[prefill, decode]. The past length reaches max_seq_len in both: batches (and CUDA-graph decode) bind the
    whole cache with unused slots masked off, so shapes stay fixed (see backend.py, plan_step)."""
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
            _EMBEDS: tuple((b[k], s[k], hidden) for k in range(3)),
            _POSITIONS: tuple((3, b[k], s[k]) for k in range(3)),
            _MASK: tuple((b[k], m[k]) for k in range(3)),
        }
        for i in range(int(model["num_layers"])):
            kv = tuple((b[k], p[k], kvh, hd) for k in range(3))
            for name in contract.past_names(i):
                profile[name] = kv
        profiles.append(profile)
    return profiles


def profiles_to_json(profiles: list[Profile]) -> list[dict]:
    return [{name: [list(s) for s in shapes] for name, shapes in p.items()} for p in profiles]


def _volume(shape: Shape) -> int:
    return math.prod(shape) if shape else 1


def kv_cache_bytes(manifest: dict, limits: Limits) -> int:
    """One float32 (B, max_seq_len, kv_heads, head_dim) buffer per layer for keys and one for values."""
    model = _model(manifest)
    per = limits.batch * limits.max_seq_len * int(model["num_key_value_heads"]) * int(model["head_dim"]) * FP32
    return 2 * int(model["num_layers"]) * per


def kv_row_bytes(manifest: dict) -> int:
    """Bytes of one cache position of one layer: kv_heads x head_dim float32."""
    model = _model(manifest)
    return int(model["num_key_value_heads"]) * int(model["head_dim"]) * FP32


def kv_scratch_seq(manifest: dict, limits: Limits, cuda_graph: bool = False) -> int:
    """Positions of the scratch buffer that receives new keys/values before a strided copy into the cache: batches
    (their past is strided), rows that are not a multiple of TensorRT's 256-byte address alignment (the new keys
    cannot be bound in place at every offset), and one position for CUDA-graph decode."""
    if limits.batch > 1 or kv_row_bytes(manifest) % ALIGNMENT:
        return limits.max_prefill
    return 1 if cuda_graph else 0


def kv_scratch_bytes(manifest: dict, limits: Limits, cuda_graph: bool = False) -> int:
    seq = kv_scratch_seq(manifest, limits, cuda_graph)
    return 2 * int(_model(manifest)["num_layers"]) * limits.batch * seq * kv_row_bytes(manifest)


def io_buffer_plan(manifest: dict, limits: Limits) -> dict[str, int]:
    """Bytes of every device I/O buffer the backend allocates once (excluding the KV cache)."""
    model = _model(manifest)
    vis = vision_profile(manifest, limits)
    plan = {}
    for name, (_, _, high) in vis.items():
        plan[f"vision.{name}"] = _volume(high) * (FP32 if name == _PIXELS else INT64)
    n_max = vis[_PIXELS][2][0]
    out_hidden = int(model["vision"].get("out_hidden_size", model["hidden_size"]))
    plan[f"vision.{VISION_OUTPUT}"] = n_max // merge_unit(manifest) * out_hidden * FP32
    prefill = decoder_profiles(manifest, limits)[0]
    for name in DECODER_INPUTS:
        plan[f"decoder.{name}"] = _volume(prefill[name][2]) * (FP32 if name == _EMBEDS else INT64)
    plan[f"decoder.{LOGITS}"] = limits.batch * int(model["vocab_size"]) * FP32
    drafts = int(manifest["graphs"]["decoder"].get("draft_logits", 0))
    if drafts:  # bound on every run (TensorRT needs an address for every output), read back after draft checks
        plan[f"decoder.{DRAFT_LOGITS}"] = limits.batch * drafts * int(model["vocab_size"]) * FP32
    return plan
