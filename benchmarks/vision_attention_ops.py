"""Which attention form the vision graph should use on ONNX Runtime CPU: plain ops vs fused ops.

One attention call (the vision tower's shapes: 16 heads x 80, Qwen2.5-VL-3B) in four forms, each in its own
subprocess (peak RSS growth during the run is the attention's working memory):
  plain   MatMul -> Add(key padding bias) -> Softmax (fp32) -> MatMul: materialises (B, H, S, S) scores
  mha     com.microsoft MultiHeadAttention (BSD layout, key_padding_mask)
  attn23  ONNX Attention (opset 23; BHSD, boolean attn_mask broadcast over heads and queries)
for a full-attention block (one image, S = patches) and for window attention (B windows of 64 patches), fp32 and
fp16 (fp16 graphs keep the softmax in fp32 where the op lets them: plain casts, attn23 softmax_precision=1).

    python benchmarks/vision_attention_ops.py --out benchmarks/results/vision-attention-ops.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

HEADS, HEAD_DIM = 16, 80


def _graph(form: str, fp16: bool, masked: bool):
    from onnx import TensorProto, helper

    t = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    nodes, inputs = [], []
    scale = HEAD_DIM ** -0.5
    if form == "mha":
        for name in ("q", "k", "v"):
            inputs.append(helper.make_tensor_value_info(name, t, ["B", "S", HEADS * HEAD_DIM]))
        ins = ["q", "k", "v", "", ""]
        if masked:
            inputs.append(helper.make_tensor_value_info("mask", TensorProto.INT32, ["B", "S"]))
            ins[4] = "mask"
        nodes.append(helper.make_node("MultiHeadAttention", ins, ["out"], domain="com.microsoft",
                                      num_heads=HEADS, scale=scale))
        out = helper.make_tensor_value_info("out", t, ["B", "S", HEADS * HEAD_DIM])
        opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    else:
        for name in ("q", "k", "v"):
            inputs.append(helper.make_tensor_value_info(name, t, ["B", HEADS, "S", HEAD_DIM]))
        if masked:
            inputs.append(helper.make_tensor_value_info("mask", TensorProto.BOOL, ["B", 1, 1, "S"]))
        out = helper.make_tensor_value_info("out", t, ["B", HEADS, "S", HEAD_DIM])
        if form == "attn23":
            attrs = {"scale": scale}
            if fp16:
                attrs["softmax_precision"] = TensorProto.FLOAT
            nodes.append(helper.make_node("Attention", ["q", "k", "v"] + (["mask"] if masked else []), ["out"],
                                          **attrs))
            opsets = [helper.make_opsetid("", 23)]
        else:
            nodes += [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
                      helper.make_node("MatMul", ["q", "kt"], ["s0"]),
                      helper.make_node("Cast", ["s0"], ["s1"], to=TensorProto.FLOAT),
                      helper.make_node("Mul", ["s1", "scale"], ["s2"])]
            last = "s2"
            if masked:
                nodes.append(helper.make_node("Where", ["mask", "s2", "neg"], ["s3"]))
                last = "s3"
            nodes += [helper.make_node("Softmax", [last], ["p0"], axis=-1),
                      helper.make_node("Cast", ["p0"], ["p1"], to=t),
                      helper.make_node("MatMul", ["p1", "v"], ["out"])]
            opsets = [helper.make_opsetid("", 18)]
    inits = [helper.make_tensor("scale", TensorProto.FLOAT, [], [scale]),
             helper.make_tensor("neg", TensorProto.FLOAT, [], [float(np.finfo(np.float32).min)])]
    graph = helper.make_graph(nodes, "attention", inputs, [out], initializer=inits if form == "plain" else [])
    return helper.make_model(graph, opset_imports=opsets, ir_version=10)


def _child(form: str, fp16: bool, masked: bool, batch: int, seq: int, repeats: int) -> dict:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        sess = ort.InferenceSession(_graph(form, fp16, masked).SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # an op/type this ONNX Runtime cannot run on CPU: record why
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    dt = np.float16 if fp16 else np.float32
    rng = np.random.default_rng(0)
    shape = (batch, seq, HEADS * HEAD_DIM) if form == "mha" else (batch, HEADS, seq, HEAD_DIM)
    feeds = {n: rng.standard_normal(shape).astype(dt) for n in ("q", "k", "v")}
    if masked:
        valid = np.ones((batch, seq), dtype=bool)
        valid[-1, seq - seq // 8:] = False  # some padding in the last sequence
        feeds["mask"] = valid.astype(np.int32) if form == "mha" else valid[:, None, None, :]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = sess.run(["out"], feeds)[0]
            times.append(time.perf_counter() - t0)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = out.astype(np.float32)
    if form == "mha":
        out = out.reshape(batch, seq, HEADS, HEAD_DIM).transpose(0, 2, 1, 3)
    return {"ms": 1000 * statistics.median(times), "peak_extra_mb": (peak - base) / 1024,
            "checksum": float(np.abs(out[0, :, :8]).mean())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--patches", type=int, default=4900)  # 1225 image tokens (1008x1008)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", nargs=6)
    args = ap.parse_args()
    if args.child:
        form, fp16, masked, batch, seq, repeats = args.child
        print(json.dumps(_child(form, fp16 == "1", masked == "1", int(batch), int(seq), int(repeats))))
        return
    import onnxruntime

    cases = {"full": (1, args.patches), "window": (args.patches // 64, 64)}
    rows = []
    for case, (batch, seq) in cases.items():
        for fp16 in (False, True):
            for form in ("plain", "mha", "attn23"):
                for masked in (False, True):
                    cmd = [sys.executable, __file__, "--child", form, str(int(fp16)), str(int(masked)), str(batch),
                           str(seq), str(args.repeats)]
                    res = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
                    row = {"case": case, "batch": batch, "seq": seq, "precision": "fp16" if fp16 else "fp32",
                           "form": form, "masked": masked, **res, "load": os.getloadavg()[0]}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    result = {"onnxruntime": onnxruntime.__version__, "threads": 2, "heads": HEADS, "head_dim": HEAD_DIM,
              "load_average": os.getloadavg(), "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
