"""Toy ONNX graphs with the bundle's graph contract (docs/DESIGN.md) and a numpy reference of what they compute.

Not a language model: the decoder's logits are a fixed linear function of the masked sum of all keys and values
(past + new) plus the last position id, so a test can check that the runtime binds the past, writes new K/V into
the right cache slots and passes masks and positions, step by step, against `toy_decoder_reference`.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np


def _rng_weights(seed, layers, hidden, kv, vocab):
    rng = np.random.default_rng(seed)
    wk = [rng.standard_normal((hidden, kv)).astype(np.float32) for _ in range(layers)]
    wv = [rng.standard_normal((hidden, kv)).astype(np.float32) for _ in range(layers)]
    wo = rng.standard_normal((2 * layers * kv, vocab)).astype(np.float32)
    u = rng.standard_normal((vocab,)).astype(np.float32)
    return wk, wv, wo, u


def toy_decoder(path: Path, *, layers=2, hidden=8, kv_heads=1, head_dim=4, vocab=32, seed=0) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    kv = kv_heads * head_dim
    wk, wv, wo, u = _rng_weights(seed, layers, hidden, kv, vocab)
    inits = [numpy_helper.from_array(wo, "Wo"), numpy_helper.from_array(u, "U"),
             numpy_helper.from_array(np.array([0, 0, kv], np.int64), "shape_flat"),
             numpy_helper.from_array(np.array([0, 0, kv_heads, head_dim], np.int64), "shape_kv"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1"),
             numpy_helper.from_array(np.array([-1], np.int64), "last"),
             numpy_helper.from_array(np.array([0], np.int64), "zero")]
    nodes, sums = [], []
    inputs = [helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT, ["B", "S", hidden]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, [3, "B", "S"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["B", "T"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", vocab])]
    nodes.append(helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT))
    nodes.append(helper.make_node("Unsqueeze", ["maskf", "last"], ["mask3"]))
    for i in range(layers):
        for kind, w in (("key", wk[i]), ("value", wv[i])):
            inits.append(numpy_helper.from_array(w, f"W{kind}{i}"))
            inputs.append(helper.make_tensor_value_info(f"past_{kind}.{i}", TensorProto.FLOAT,
                                                        ["B", "P", kv_heads, head_dim]))
            outputs.append(helper.make_tensor_value_info(f"new_{kind}.{i}", TensorProto.FLOAT,
                                                         ["B", "S", kv_heads, head_dim]))
            nodes += [
                helper.make_node("MatMul", ["inputs_embeds", f"W{kind}{i}"], [f"{kind}{i}_flat"]),
                helper.make_node("Reshape", [f"{kind}{i}_flat", "shape_kv"], [f"new_{kind}.{i}"]),
                helper.make_node("Concat", [f"past_{kind}.{i}", f"new_{kind}.{i}"], [f"{kind}{i}_all"], axis=1),
                helper.make_node("Reshape", [f"{kind}{i}_all", "shape_flat"], [f"{kind}{i}_all2"]),
                helper.make_node("Mul", [f"{kind}{i}_all2", "mask3"], [f"{kind}{i}_masked"]),
                helper.make_node("ReduceSum", [f"{kind}{i}_masked", "axis1"], [f"{kind}{i}_sum"], keepdims=0),
            ]
            sums.append(f"{kind}{i}_sum")
    nodes += [
        helper.make_node("Concat", sums, ["features"], axis=1),
        helper.make_node("MatMul", ["features", "Wo"], ["base"]),
        helper.make_node("Gather", ["position_ids", "zero"], ["pos_t"], axis=0),  # (1, B, S)
        helper.make_node("Gather", ["pos_t", "last"], ["pos_last"], axis=2),  # (1, B, 1)
        helper.make_node("Squeeze", ["pos_last", "zero"], ["pos_b1"]),  # (B, 1)
        helper.make_node("Cast", ["pos_b1"], ["pos_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["pos_f", "U"], ["pos_term"]),
        helper.make_node("Add", ["base", "pos_term"], ["logits"]),
    ]
    graph = helper.make_graph(nodes, "toy_decoder", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def toy_decoder_reference(embeds_all, positions_all, mask_all, *, layers=2, hidden=8, kv_heads=1, head_dim=4,
                          vocab=32, seed=0):
    """Logits after the whole sequence: embeds (B,T,H), positions (3,B,T), mask (B,T)."""
    kv = kv_heads * head_dim
    wk, wv, wo, u = _rng_weights(seed, layers, hidden, kv, vocab)
    m = mask_all.astype(np.float32)[:, :, None]
    feats = []
    for i in range(layers):
        feats.append(((embeds_all @ wk[i]) * m).sum(1))
        feats.append(((embeds_all @ wv[i]) * m).sum(1))
    return np.concatenate(feats, 1) @ wo + positions_all[0, :, -1:].astype(np.float32) * u


def toy_vision(path: Path, *, out_hidden=8, seed=1) -> None:
    """image_embeds = (merge blocks of 4 patches, flattened) @ W: one row per merged token, processor order."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((4 * 1176, out_hidden)) * 0.01).astype(np.float32)
    inputs = [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["N", 1176])]
    for name, shape in (("rotary_pos_ids", ["N", 2]), ("window_index", ["M"]), ("reverse_window_index", ["M"]),
                        ("window_segments", ["N"]), ("image_segments", ["N"])):
        inputs.append(helper.make_tensor_value_info(name, TensorProto.INT64, shape))
    nodes = [helper.make_node("Reshape", ["pixel_values", "shape"], ["blocks"]),
             helper.make_node("MatMul", ["blocks", "W"], ["image_embeds"])]
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array([-1, 4 * 1176], np.int64), "shape")]
    graph = helper.make_graph(nodes, "toy_vision", inputs,
                              [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["M", out_hidden])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def write_manifest(root: Path, manifest: dict) -> None:
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != "manifest.json":
            data = path.read_bytes()
            files[str(path.relative_to(root))] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    manifest = dict(manifest, files=files)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))


def toy_manifest(*, layers=2, hidden=8, kv_heads=1, head_dim=4, vocab=32) -> dict:
    return {
        "format": "omniad-edge-bundle", "format_version": 1, "name": "toy", "precision": "fp32",
        "model": {"architecture": "qwen2_5_vl", "hidden_size": hidden, "num_layers": layers,
                  "num_attention_heads": 2, "num_key_value_heads": kv_heads, "head_dim": head_dim,
                  "vocab_size": vocab, "rope_theta": 10000.0, "mrope_section": [1, 1], "max_position": 4096,
                  "vision": {"depth": 1, "hidden_size": 8, "num_heads": 1, "out_hidden_size": hidden,
                             "patch_size": 14, "temporal_patch_size": 2, "spatial_merge_size": 2,
                             "window_size": 112, "fullatt_block_indexes": [0]}},
        "tokens": {"image_pad": 5, "vision_start": 3, "vision_end": 4, "eos": [2], "pad": 0},
        "preprocess": {"patch_size": 14, "merge_size": 2, "temporal_patch_size": 2, "min_pixels": 3136,
                       "max_pixels": 50176, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                       "resample": "bicubic", "max_image_tokens": 64},
        "prompt": {"template": "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{content}<|im_end|>\n"
                               "<|im_start|>assistant\n",
                   "image": "<|vision_start|>{image_pads}<|vision_end|>", "system": "sys", "detect": "go",
                   "reference_intro": "Following is {n} image of normal sample.",
                   "query_intro": "Following is the query image:"},
        "output": {"order": ["mask", "explanation", "answer"],
                   "tags": {"mask": ["<seg>", "</seg>"], "explanation": ["<think>", "</think>"],
                            "answer": ["<answer>", "</answer>"]},
                   "mask": {"codec": "compact", "grid": 16, "labels": ["others", "scratch"], "background": 0,
                            "coverage": 0.02},
                   "answers": {"anomalous": "yes", "normal": "no"}},
        "graphs": {"vision": {"path": "vision.onnx"}, "decoder": {"path": "decoder.onnx", "kv_layout": "BSHD"}},
        "embed_tokens": {"path": "embed_tokens.npy", "dtype": "float32", "shape": [vocab, hidden]},
        "tokenizer": {"path": "tokenizer.json"},
        "exporter": {"name": "tests.toy_graphs", "version": "0"},
    }


def make_toy_bundle(root: Path, *, layers=2, hidden=8, kv_heads=1, head_dim=4, vocab=32) -> Path:
    """A complete, valid bundle directory of toy graphs (the tokenizer is a placeholder file)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    toy_decoder(root / "decoder.onnx", layers=layers, hidden=hidden, kv_heads=kv_heads, head_dim=head_dim,
                vocab=vocab)
    toy_vision(root / "vision.onnx", out_hidden=hidden)
    rng = np.random.default_rng(2)
    np.save(root / "embed_tokens.npy", rng.standard_normal((vocab, hidden)).astype(np.float32))
    (root / "tokenizer.json").write_text("{}")
    write_manifest(root, toy_manifest(layers=layers, hidden=hidden, kv_heads=kv_heads, head_dim=head_dim,
                                      vocab=vocab))
    return root
