"""Inputs shared by the TensorRT tests: Qwen2.5-VL-3B-shaped manifests, GPUs of several generations, placeholder
bundles on disk, and the loader for the fake TensorRT beside the tests."""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
from pathlib import Path

from omniad_edge.tensorrt import DeviceInfo

TESTS = Path(__file__).resolve().parents[1]


def load_sibling(name):
    """A module from tests/ (fake_tensorrt, toy_graphs), loaded by path."""
    spec = importlib.util.spec_from_file_location(f"_omniad_{name}", TESTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def qwen3b_manifest(**overrides) -> dict:
    """Qwen2.5-VL-3B's published shapes (config.json), as the exporter would write them."""
    manifest = {
        "format": "omniad-edge-bundle", "format_version": 1, "name": "qwen3b-like", "precision": "fp32",
        "model": {"architecture": "qwen2_5_vl", "hidden_size": 2048, "num_layers": 36, "num_attention_heads": 16,
                  "num_key_value_heads": 2, "head_dim": 128, "vocab_size": 151936, "intermediate_size": 11008,
                  "max_position": 128000,
                  "vision": {"depth": 32, "hidden_size": 1280, "num_heads": 16, "out_hidden_size": 2048,
                             "patch_size": 14, "temporal_patch_size": 2, "spatial_merge_size": 2,
                             "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31]}},
        "preprocess": {"patch_size": 14, "merge_size": 2, "temporal_patch_size": 2, "min_pixels": 3136,
                       "max_pixels": 1003520, "max_image_tokens": 1280},
        "graphs": {"vision": {"path": "vision.onnx"}, "decoder": {"path": "decoder.onnx", "kv_layout": "BSHD"}},
        "files": {"vision.onnx": {"sha256": "0", "bytes": 1000}, "vision.onnx.data": {"sha256": "0", "bytes": 2 << 30},
                  "decoder.onnx": {"sha256": "0", "bytes": 5000},
                  "decoder.onnx.data": {"sha256": "0", "bytes": 12 << 30},
                  "embed_tokens.npy": {"sha256": "0", "bytes": 151936 * 2048 * 4},
                  "tokenizer.json": {"sha256": "0", "bytes": 7000}},
        "embed_tokens": {"path": "embed_tokens.npy", "dtype": "float32", "shape": [151936, 2048]},
    }
    manifest.update(overrides)
    return manifest


def small_manifest() -> dict:
    m = qwen3b_manifest()
    m["model"].update(hidden_size=16, num_layers=2, num_key_value_heads=2, head_dim=8, vocab_size=100,
                      max_position=4096)
    m["preprocess"]["max_image_tokens"] = 64
    return m


ORIN = DeviceInfo(name="Orin", compute_capability=(8, 7), total_memory=8 << 30, free_memory=6 << 30, integrated=True)
H100 = DeviceInfo(name="NVIDIA H100", compute_capability=(9, 0), total_memory=80 << 30, free_memory=79 << 30)
V100 = DeviceInfo(name="Tesla V100", compute_capability=(7, 0), total_memory=16 << 30, free_memory=15 << 30)
P4 = DeviceInfo(name="Tesla P4", compute_capability=(6, 1), total_memory=8 << 30, free_memory=7 << 30)


def write_bundle(root: Path, manifest: dict, sizes: dict[str, int]) -> Path:
    """A bundle directory with placeholder files (load_bundle checks hashes, not ONNX content)."""
    root.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, size in sizes.items():
        data = bytes(size)
        (root / name).write_bytes(data)
        files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": size}
    manifest = copy.deepcopy(manifest)
    manifest["files"] = files
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def full_manifest(**overrides) -> dict:
    m = small_manifest()
    m.update({
        "tokens": {"image_pad": 5, "vision_start": 3, "vision_end": 4, "eos": [2], "pad": 0},
        "prompt": {k: "" for k in ("template", "image", "system", "detect", "reference_intro", "query_intro")},
        "output": {"order": [], "tags": {}, "mask": {}},
        "tokenizer": {"path": "tokenizer.json"},
    })
    m["preprocess"].update(mean=[0.5] * 3, std=[0.5] * 3)
    m["embed_tokens"] = {"path": "embed_tokens.npy", "dtype": "float32", "shape": [100, 16]}
    m.update(overrides)
    return m


SIZES = {"vision.onnx": 10, "decoder.onnx": 20, "decoder.onnx.data": 30, "embed_tokens.npy": 40, "tokenizer.json": 2}
