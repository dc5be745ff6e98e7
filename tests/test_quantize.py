"""export/quantize.py: int8 dynamic quantization streamed one weight at a time equals onnxruntime's whole-graph
quantize_dynamic, and writes its weights to an external data file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="quantization uses onnxruntime's tools")

from omniad_edge.errors import ExportError  # noqa: E402


def _toy(tmp_path: Path, name: str = "float.onnx") -> Path:
    """A float32 graph with what the int8 pass must handle as the whole-graph tool does: named and unnamed MatMuls,
    one activation read by two quantized MatMuls, one weight read by two MatMuls, a MatMul whose B is not constant
    (left float), a Gemm with a bias and transB (the tool rewrites it to MatMul + Add: quantized) and one with alpha
    (left float); saved with its weights in external data, as exports are."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = {n: numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
         for n, s in (("w1", (64, 96)), ("wq", (96, 48)), ("wk", (96, 48)), ("w3", (4, 8)), ("g", (16, 8)),
                      ("c", (16,)), ("g2", (16, 16)))}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"], name="mm1"),
             helper.make_node("Relu", ["h1"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "wq"], ["q"], name="q_proj"),
             helper.make_node("MatMul", ["r", "wk"], ["k"]),  # unnamed
             helper.make_node("Transpose", ["k"], ["kt"], perm=[1, 0], name="kt"),
             helper.make_node("MatMul", ["q", "kt"], ["s"], name="scores"),  # B not constant
             helper.make_node("MatMul", ["s", "w3"], ["o1"], name="mm3"),
             helper.make_node("MatMul", ["x", "w1"], ["h2"], name="mm1_again"),  # w1 read twice
             helper.make_node("Gemm", ["o1", "g", "c"], ["o2"], name="gemm", transB=1),  # rewritten: quantized
             helper.make_node("Gemm", ["o2", "g2", "c"], ["o3"], name="gemm_alpha", alpha=0.5)]  # left float
    graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                              [helper.make_tensor_value_info("o3", TensorProto.FLOAT, [4, 16]),
                               helper.make_tensor_value_info("h2", TensorProto.FLOAT, [4, 96])], list(w.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path / name
    onnx.save_model(model, str(path), save_as_external_data=True, location=f"{name}.data", size_threshold=0)
    return path


def _whole_graph(src: Path, dst: Path) -> None:
    """onnxruntime's quantize_dynamic over the whole graph, with the settings the exporter's int8 always used."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(src, dst, op_types_to_quantize=["MatMul"], per_channel=True, weight_type=QuantType.QInt8,
                     use_external_data_format=True, extra_options={"MatMulConstBOnly": True})


def _arrays(path: Path) -> dict:
    import onnx
    from onnx import numpy_helper

    model = onnx.load_model(str(path), load_external_data=True)
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _nodes(path: Path) -> list:
    import onnx

    model = onnx.load_model(str(path), load_external_data=False)
    return sorted((n.op_type, n.domain, n.name, tuple(n.input), tuple(n.output)) for n in model.graph.node)


def _run(path: Path, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})


def test_streamed_int8_equals_whole_graph_quantize_dynamic(tmp_path):
    from export.quantize import quantize_int8_file

    src = _toy(tmp_path)
    whole, streamed = tmp_path / "whole.onnx", tmp_path / "streamed.onnx"
    _whole_graph(src, whole)
    quantize_int8_file(src, streamed)
    # the same nodes (one DynamicQuantizeLinear per activation, the non-constant MatMul and a Gemm left float)
    assert _nodes(streamed) == _nodes(whole)
    ops = [n[0] for n in _nodes(streamed)]
    assert ops.count("MatMulInteger") == 6 and ops.count("DynamicQuantizeLinear") == 4  # x, r, s, o1
    assert ops.count("MatMul") == 1 and ops.count("Gemm") == 1
    # the same quantized weights, scales and zero points, bit for bit
    a, b = _arrays(whole), _arrays(streamed)
    assert a.keys() == b.keys() and {"w1_quantized", "g_Transposed_quantized", "g2", "c"} <= a.keys()
    for name in b:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
    x = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    for out_a, out_b in zip(_run(whole, x), _run(streamed, x)):
        assert np.array_equal(out_a, out_b)
    # and a quantization, not a copy: the float graph's outputs differ by int8 rounding only
    ref = _run(src, x)[1]
    err = np.abs(_run(streamed, x)[1] - ref).max() / np.abs(ref).max()
    assert 0 < err < 0.05, err  # measured ~1e-2


def test_streamed_int8_quantizes_one_weight_at_a_time(tmp_path, monkeypatch):
    """quantize_dynamic only ever sees a one-node graph (MatMul or Gemm) holding one weight; the result's weights
    go to `dst`.data when they exceed the threshold, and a small result is one self-contained file."""
    import onnx
    import onnxruntime.quantization as ortq

    from export.quantize import quantize_int8_file

    seen, real = [], ortq.quantize_dynamic

    def spy(model_input, *args, **kwargs):
        graph = onnx.load_model(str(model_input), load_external_data=False).graph
        seen.append(([n.op_type for n in graph.node], [i.name for i in graph.initializer]))
        return real(model_input, *args, **kwargs)

    monkeypatch.setattr(ortq, "quantize_dynamic", spy)
    src = _toy(tmp_path)
    dst = tmp_path / "external.onnx"
    assert quantize_int8_file(src, dst, threshold=0) == [dst, tmp_path / "external.onnx.data"]
    assert sorted(w for _, (w,) in seen) == ["g", "g2", "w1", "w1", "w3", "wk", "wq"]  # g2: the tool leaves it
    assert sorted(ops for ops, _ in seen) == [["Gemm"]] * 2 + [["MatMul"]] * 5
    structure = onnx.load_model(str(dst), load_external_data=False)
    external = {i.name for i in structure.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL}
    # every weight matrix goes to the data file; tensors under 1 KiB (scales, zero points, the bias) stay inline
    assert {"w1_quantized", "wq_quantized", "wk_quantized", "g2"} <= external
    assert len(structure.graph.initializer) == len({i.name for i in structure.graph.initializer})  # no name twice
    assert structure.ByteSize() < 10_000  # the graph file holds the structure and small tensors only
    inline = tmp_path / "inline.onnx"
    assert quantize_int8_file(src, inline) == [inline]  # under the default threshold (1.8 GB)
    assert not (tmp_path / "inline.onnx.data").exists()
    x = np.random.default_rng(2).standard_normal((4, 64)).astype(np.float32)
    for a, b in zip(_run(dst, x), _run(inline, x)):
        assert np.array_equal(a, b)


def test_streamed_int8_reads_weights_through_casts_and_transposes(tmp_path):
    """A bfloat16 checkpoint's weights reach their MatMul through Cast (and Transpose) nodes (graphs._CastLinear):
    they are quantized as the float32 matrix the MatMul reads, and the Casts of other constants folded."""
    import ml_dtypes
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from export.quantize import quantize_int8_file

    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((64, 32)).astype(ml_dtypes.bfloat16)
    w2 = rng.standard_normal((16, 32)).astype(ml_dtypes.bfloat16)  # [N, K], as torch stores a Linear's weight
    scale = np.linspace(-1, 1, 32).astype(ml_dtypes.bfloat16)
    nodes = [helper.make_node("Cast", ["w1"], ["w1_f"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["x", "w1_f"], ["h0"], name="mm1"),
             helper.make_node("Cast", ["scale"], ["scale_f"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["h0", "scale_f"], ["h"]),
             helper.make_node("Cast", ["w2"], ["w2_f"], to=TensorProto.FLOAT),
             helper.make_node("Transpose", ["w2_f"], ["w2_t"], perm=[1, 0]),
             helper.make_node("MatMul", ["h", "w2_t"], ["y"], name="mm2")]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (w2, "w2"), (scale, "scale"))]
    graph = helper.make_graph(nodes, "bf16", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])], inits)
    src = tmp_path / "bf16.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(src))
    dst = tmp_path / "int8.onnx"
    quantize_int8_file(src, dst)
    model = onnx.load_model(str(dst))
    assert [n.op_type for n in model.graph.node].count("MatMulInteger") == 2
    assert not [n for n in model.graph.node if n.op_type in ("Cast", "Transpose") and n.input[0] in ("w1", "w2",
                                                                                                      "scale")]
    assert not any(i.data_type == TensorProto.BFLOAT16 for i in model.graph.initializer)
    x = np.random.default_rng(4).standard_normal((4, 64)).astype(np.float32)
    ref = ((x @ w1.astype(np.float32)) * scale.astype(np.float32)) @ w2.astype(np.float32).T
    out = _run(dst, x)[0]
    assert np.abs(out - ref).max() / np.abs(ref).max() < 0.05  # int8 rounding: measured ~1e-2


def test_int8_without_constant_weights_is_an_error(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from export.quantize import quantize_int8_file

    graph = helper.make_graph([helper.make_node("MatMul", ["x", "x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])])
    src = tmp_path / "none.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(src))
    with pytest.raises(ExportError, match="int8 quantization changed no MatMul"):
        quantize_int8_file(src, tmp_path / "out.onnx")
