"""The TensorRT memory estimate (omniad_edge.tensorrt.memory.estimate_memory) for the published Qwen2.5-VL-3B and
Qwen2-VL-2B shapes on a Jetson Orin Nano 8 GB: estimates, not measurements (no TensorRT build, no device).

    python benchmarks/trt_memory_table.py > benchmarks/results/trt-memory-table.md

Manifests are built from the models' config.json shapes; graph weight bytes are parameter counts x bytes per
parameter (no files are read): fp16 2; fp32 4; int4 "qdq" 0.5 per MatMul weight plus a float32 scale and a 4-bit
zero point per block of 32 (the exporter's defaults, output projection included), biases and norms float32. The
token embedding table lives on the host as float32 (the exporter's default) and counts on Jetson, whose host
memory is device memory. Vision attention "plain" (the TensorRT form), batch 1, one frame, default max-seq-len.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this tree's omniad_edge, not the installed one
from omniad_edge.tensorrt.limits import BuildOptions, resolve_limits  # noqa: E402
from omniad_edge.tensorrt.memory import estimate_memory  # noqa: E402

GIB = 1 << 30
ORIN_NANO = 8 * 10**9  # "8 GB" LPDDR5, shared by the OS, the CPU side and the GPU

MODELS = {
    "Qwen2.5-VL-3B": {
        "architecture": "qwen2_5_vl", "hidden_size": 2048, "num_layers": 36, "num_attention_heads": 16,
        "num_key_value_heads": 2, "head_dim": 128, "vocab_size": 151936, "intermediate_size": 11008,
        "max_position": 128000,
        "vision": {"depth": 32, "hidden_size": 1280, "num_heads": 16, "intermediate_size": 3420,
                   "out_hidden_size": 2048, "patch_size": 14, "temporal_patch_size": 2, "spatial_merge_size": 2,
                   "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31]},
    },
    "Qwen2-VL-2B": {  # vision: embed_dim 1280, mlp_ratio 4; no windows, every block full
        "architecture": "qwen2_vl", "hidden_size": 1536, "num_layers": 28, "num_attention_heads": 12,
        "num_key_value_heads": 2, "head_dim": 128, "vocab_size": 151936, "intermediate_size": 8960,
        "max_position": 32768,
        "vision": {"depth": 32, "hidden_size": 1280, "num_heads": 16, "intermediate_size": 5120,
                   "out_hidden_size": 1536, "patch_size": 14, "temporal_patch_size": 2, "spatial_merge_size": 2,
                   "window_size": None, "fullatt_block_indexes": list(range(32))},
    },
}
# (name, decoder precision, vision precision)
BUNDLES = [("fp16", "fp16", "fp16"), ("int4-qdq, vision fp32 (default)", "int4", "fp32"),
           ("int4-qdq, --vision-precision fp16", "int4", "fp16")]


def _linear(n_in: int, n_out: int, bias: bool) -> tuple[int, int]:
    """(MatMul weights, other parameters) of one linear layer."""
    return n_in * n_out, n_out if bias else 0


def vision_params(model: dict) -> tuple[int, int]:
    v = model["vision"]
    d, inter, out = v["hidden_size"], v["intermediate_size"], v["out_hidden_size"]
    layer_norm = model["architecture"] == "qwen2_vl"  # LayerNorm (weight, bias) and a 2-layer MLP; else RMSNorm, gated
    norm = 2 * d if layer_norm else d
    mlp = [(d, inter), (inter, d)] if layer_norm else [(d, inter), (d, inter), (inter, d)]
    mats, other = 3 * 2 * 14 * 14 * d, 0  # patch embedding (a Conv3d without bias: a MatMul in effect)
    for n_in, n_out in [(d, 3 * d), (d, d), *mlp]:
        w, b = _linear(n_in, n_out, True)
        mats, other = mats + v["depth"] * w, other + v["depth"] * b
    other += v["depth"] * 2 * norm + norm  # two norms per block, the merger's norm
    for n_in, n_out in [(4 * d, 4 * d), (4 * d, out)]:  # the merger
        w, b = _linear(n_in, n_out, True)
        mats, other = mats + w, other + b
    return mats, other


def decoder_params(model: dict) -> tuple[int, int]:
    """The decoder graph: layers, final norm and the output projection (tied to the embeddings, which the bundle
    keeps on the host as a separate table)."""
    h, kv, inter = model["hidden_size"], model["num_key_value_heads"] * model["head_dim"], model["intermediate_size"]
    mats, other = 0, 0
    for n_in, n_out, bias in [(h, h, True), (h, kv, True), (h, kv, True), (h, h, False),
                              (h, inter, False), (h, inter, False), (inter, h, False)]:
        w, b = _linear(n_in, n_out, bias)
        mats, other = mats + model["num_layers"] * w, other + model["num_layers"] * b
    other += model["num_layers"] * 2 * h + h
    return mats + model["vocab_size"] * h, other


def graph_bytes(params: tuple[int, int], precision: str) -> int:
    mats, other = params
    per_weight = {"fp16": 2, "fp32": 4, "int4": 0.5 + 4 / 32 + 0.5 / 32}[precision]
    return int(mats * per_weight + other * (2 if precision == "fp16" else 4))


def manifest(model: dict, decoder: str, vision: str) -> dict:
    v = model["vision"]
    vision_bytes = graph_bytes(vision_params(model), vision)
    decoder_bytes = graph_bytes(decoder_params(model), decoder)
    embed = model["vocab_size"] * model["hidden_size"] * 4
    return {
        "precision": decoder, "model": model,
        "preprocess": {"patch_size": v["patch_size"], "merge_size": v["spatial_merge_size"],
                       "temporal_patch_size": v["temporal_patch_size"], "min_pixels": 3136,
                       "max_pixels": 1280 * 28 * 28, "max_image_tokens": 1280},
        "graphs": {"vision": {"path": "vision.onnx", "precision": vision, "attention": {"full": "plain", "window":
                              "plain"} if v["window_size"] else {"full": "plain"}},
                   "decoder": {"path": "decoder.onnx", "precision": decoder, "kv_layout": "BSHD"}},
        "files": {"vision.onnx": {"bytes": vision_bytes}, "decoder.onnx": {"bytes": decoder_bytes},
                  "embed_tokens.npy": {"bytes": embed}},
        "embed_tokens": {"path": "embed_tokens.npy", "dtype": "float32"},
    }


def main() -> None:
    print("# TensorRT memory estimate on a Jetson Orin Nano 8 GB (benchmarks/trt_memory_table.py)\n")
    print(f"Estimates, not measurements (no device, no build); load average {os.getloadavg()} (pure arithmetic).")
    print("Plain vision attention, batch 1, one frame, default max-seq-len; GiB. 'fits' compares the total with "
          f"8 GB = {ORIN_NANO / GIB:.2f} GiB, before the OS and desktop take their share.\n")
    print("| model | bundle | image tokens / max-seq-len | vision weights | decoder weights | vision act. "
          "(largest term) | decoder act. | KV cache | I/O | host embeddings | overhead | total | fits |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, model in MODELS.items():
        for label, decoder, vision in BUNDLES:
            m = manifest(model, decoder, vision)
            for tokens in (256, 1280):
                limits = resolve_limits(m, BuildOptions(max_image_tokens=tokens))
                est = estimate_memory(m, limits, integrated=True)
                p = est.parts
                largest = max(("full_block", "window_block", "mlp"), key=lambda k: p.get(f"vision_{k}", -1))
                dec_act = p["prefill_activations"] + p["decode_activations"]
                cells = [p["vision_weights"], p["decoder_weights"]]
                print(f"| {name} | {label} | {tokens} / {limits.max_seq_len} | "
                      + " | ".join(f"{x / GIB:.2f}" for x in cells)
                      + f" | {p['vision_activations'] / GIB:.2f} ({largest.replace('_', ' ')}) | "
                      + " | ".join(f"{x / GIB:.2f}" for x in (dec_act, est.kv_cache, est.io_buffers,
                                                                est.host_embeddings, est.overhead, est.total))
                      + f" | {'yes' if est.total <= ORIN_NANO else 'no'} |")


if __name__ == "__main__":
    main()
