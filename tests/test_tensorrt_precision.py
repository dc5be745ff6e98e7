"""Precision rules (pure, every machine): GPU generation, TensorRT version, bundle precision, fp32 islands."""
from __future__ import annotations

import pytest

from helpers.tensorrt_cases import H100, ORIN, P4, V100, qwen3b_manifest
from omniad_edge.errors import BackendError, BundleError
from omniad_edge.tensorrt import precision as prec
from omniad_edge.tensorrt.limits import BuildOptions


# -- precision --------------------------------------------------------------------------------------------------

def test_fp8_needs_ada_or_hopper():
    with pytest.raises(BackendError, match="8.9"):
        prec.check_precision(BuildOptions(fp8=True), ORIN, "10.3.0", {"vision": "fp16", "decoder": "fp16"})
    prec.check_precision(BuildOptions(fp8=True), H100, "10.3.0", {"vision": "fp16", "decoder": "fp16"})


def test_int8_and_fp16_on_a_capable_gpu():
    prec.check_precision(BuildOptions(int8=True, fp16=True), ORIN, "10.3.0", {"vision": "fp32", "decoder": "fp32"})
    # every GPU TensorRT 10 runs on has int8 and fp16 (>= 6.1); older ones are refused as a whole
    with pytest.raises(BackendError, match="Tesla P4.*not supported"):
        prec.check_precision(BuildOptions(int8=True), P4, "10.3.0", {"vision": "fp32", "decoder": "fp32"})


def test_tensorrt_older_than_10_is_refused():
    with pytest.raises(BackendError, match="int64 inputs need TensorRT 10"):
        prec.check_precision(BuildOptions(), ORIN, "8.6.2", {"vision": "fp32", "decoder": "fp32"})


def test_gpu_generation_supported_by_the_tensorrt_version():
    prec.check_precision(BuildOptions(), V100, "10.3.0", {"vision": "fp32", "decoder": "fp32"})
    with pytest.raises(BackendError, match="not supported by TensorRT 10.5.0"):
        prec.check_precision(BuildOptions(), V100, "10.5.0", {"vision": "fp32", "decoder": "fp32"})


def test_fp16_on_fp32_bundle_needs_weak_typing():
    assert not prec.strongly_typed(BuildOptions(fp16=True), "fp32", "10.3.0")
    assert not prec.strongly_typed(BuildOptions(fp16=True), "int4", "10.3.0")  # qdq int4: float32 activations
    assert prec.strongly_typed(BuildOptions(fp16=True), "fp16", "10.3.0")
    assert prec.strongly_typed(BuildOptions(), "fp32", "10.3.0")
    assert prec.strongly_typed(BuildOptions(int8=True), "fp32", "10.3.0")  # Q/DQ graphs: strongly typed by default
    assert prec.strongly_typed(BuildOptions(fp16=True), "fp32", "11.1.0")  # no weak typing left in 11
    with pytest.raises(BackendError, match="--precision fp16"):
        prec.check_precision(BuildOptions(fp16=True), H100, "11.0.0", {"vision": "fp32", "decoder": "fp32"})


def test_tensorrt_11_checks_every_graph():
    """An fp16 decoder beside an fp32 vision graph: --fp16 would need weak typing for the vision engine."""
    with pytest.raises(BackendError, match="fp32 vision graph.*TensorRT 11.1.0"):
        prec.check_precision(BuildOptions(fp16=True), ORIN, "11.1.0", {"vision": "fp32", "decoder": "fp16"})
    prec.check_precision(BuildOptions(fp16=True), ORIN, "10.3.0", {"vision": "fp32", "decoder": "fp16"})
    prec.check_precision(BuildOptions(fp16=True), ORIN, "11.1.0", {"vision": "fp16", "decoder": "fp16"})
    prec.check_precision(BuildOptions(), ORIN, "11.1.0", {"vision": "fp32", "decoder": "int4"})


@pytest.mark.parametrize("precision, ok", [("fp32", True), ("fp16", True), ("int8", False), ("int4", False),
                                          ("bf16", False)])
def test_bundle_precision_for_tensorrt(precision, ok):
    m = qwen3b_manifest(precision=precision)
    if ok:
        prec.check_bundle_precision(m)
    else:
        with pytest.raises(BundleError, match=precision):
            prec.check_bundle_precision(m)


@pytest.mark.parametrize("target", ["ort", "tensorrt", None])
def test_bundles_exported_for_onnx_runtime_are_refused(target):
    m = qwen3b_manifest(precision="fp16")
    if target is not None:
        m["target"] = target
    if target == "ort":
        m["graphs"]["decoder"]["contrib_ops"] = ["GroupQueryAttention"]
        with pytest.raises(BundleError, match="target 'ort'.*GroupQueryAttention.*--target tensorrt"):
            prec.check_bundle_precision(m)
    else:  # bundles from before targets existed pass on to the per-graph checks
        prec.check_bundle_precision(m)


def test_int4_bundles_by_format():
    """MatMulNBits is ONNX Runtime's; DequantizeLinear INT4 + MatMul (opset 21, symmetric) is TensorRT's too."""
    m = qwen3b_manifest(precision="fp32")
    m["graphs"]["decoder"].update(precision="int4", int4={"format": "matmulnbits", "block_size": 32})
    with pytest.raises(BundleError, match="MatMulNBits.*--int4-format qdq"):
        prec.check_bundle_precision(m)
    m["graphs"]["decoder"]["int4"] = {"format": "qdq", "block_size": 32, "symmetric": True}
    prec.check_bundle_precision(m)
    m["graphs"]["decoder"]["int4"]["symmetric"] = False
    with pytest.raises(BundleError, match="zero points"):
        prec.check_bundle_precision(m)


def test_fused_vision_attention_is_refused_with_the_fix():
    m = qwen3b_manifest(precision="fp16")
    m["graphs"]["vision"]["attention"] = {"full": "com.microsoft.MultiHeadAttention", "window": "plain"}
    with pytest.raises(BundleError, match="MultiHeadAttention.*--vision-attention plain"):
        prec.check_bundle_precision(m)
    m["graphs"]["vision"]["attention"] = {"full": "plain", "window": "plain"}
    prec.check_bundle_precision(m)


def test_graph_precision_overrides_the_bundle_precision():
    m = qwen3b_manifest(precision="fp16")
    m["graphs"]["vision"]["precision"] = "int8"  # the exporter's int8 vision with an fp16 decoder
    with pytest.raises(BundleError, match="vision graph is 'int8'"):
        prec.check_bundle_precision(m)
    m["graphs"]["vision"]["precision"] = "fp32"
    prec.check_bundle_precision(m)
    assert prec.graph_precision(m, "vision") == "fp32" and prec.graph_precision(m, "decoder") == "fp16"


def test_quantization_flags_need_qdq_nodes():
    with pytest.raises(BundleError, match="--int8.*decoder"):
        prec.check_quantization(BuildOptions(int8=True), 0, 0, "decoder")
    with pytest.raises(BundleError, match="--fp8"):
        prec.check_quantization(BuildOptions(fp8=True), 12, 0, "decoder")
    prec.check_quantization(BuildOptions(int8=True, fp8=True), 3, 4, "decoder")
    prec.check_quantization(BuildOptions(), 0, 0, "vision")


def _layers(*rows):
    """LayerInfo rows: (name, kind, inputs, outputs)."""
    return [prec.LayerInfo(name, kind, tuple(i.split()), tuple(o.split())) for name, kind, i, o in rows]


def _mlp(block: int, x: str, n: int):
    """One vision block's MLP as the ONNX parser imports a dynamo export: constants named after the initializers,
    compute layers named after nodes (node_Gemm_N), SiLU gating between them."""
    w = f"blocks.{block}.mlp"
    return [
        (f"{w}.gate_proj.weight", "CONSTANT", "", f"{w}.gate_proj.weight"),
        (f"{w}.up_proj.weight", "CONSTANT", "", f"{w}.up_proj.weight"),
        (f"{w}.down_proj.weight", "CONSTANT", "", f"{w}.down_proj.weight"),
        (f"node_Gemm_{n}", "MATRIX_MULTIPLY", f"{x} {w}.gate_proj.weight", f"g{block}"),
        (f"node_sigmoid_{n}", "UNARY", f"g{block}", f"s{block}"),
        (f"node_mul_{n}", "ELEMENTWISE", f"g{block} s{block}", f"a{block}"),
        (f"node_Gemm_{n + 1}", "MATRIX_MULTIPLY", f"{x} {w}.up_proj.weight", f"u{block}"),
        (f"node_mul_{n + 1}", "ELEMENTWISE", f"a{block} u{block}", f"h{block}"),
        (f"node_Gemm_{n + 2}", "MATRIX_MULTIPLY", f"h{block} {w}.down_proj.weight", f"d{block}"),
        (f"node_add_{n}", "ELEMENTWISE", f"{x} d{block}", f"x{block + 1}"),
    ]


def test_vision_fp32_layers_follow_the_weights_not_the_names():
    layers = _layers(("node_matmul", "MATRIX_MULTIPLY", "pixel_values", "x0"), *_mlp(0, "x0", 10),
                     *_mlp(1, "x1", 20), *_mlp(2, "x2", 30))
    picked, blocks = prec.vision_fp32_layers(layers, depth=3, tail_blocks=2)
    names = {layers[i].name for i in picked}
    assert blocks == [1, 2]
    assert names == {f"node_{op}_{n}" for n in (20, 30) for op in ("Gemm", "sigmoid", "mul")} | \
        {f"node_{op}_{n + 1}" for n in (20, 30) for op in ("Gemm", "mul")} | {"node_Gemm_22", "node_Gemm_32"}
    assert not any(layers[i].kind == "CONSTANT" for i in picked)  # weights are not compute layers
    assert prec.vision_fp32_layers(layers, depth=3, tail_blocks=0) == ([], [])
    # no MLP initializers at all (another exporter's names): nothing found, the caller keeps the tower fp32
    assert prec.vision_fp32_layers(_layers(("node_matmul", "MATRIX_MULTIPLY", "p W", "y"),
                                           ("W", "CONSTANT", "", "W")), depth=3, tail_blocks=2) == ([], [])


def test_weights_are_followed_through_reshapes_and_dequantisation():
    layers = _layers(("blocks.5.mlp.down_proj.weight", "CONSTANT", "", "w"), ("scale", "CONSTANT", "", "s"),
                     ("node_dq", "DEQUANTIZE", "w s", "wf"), ("node_t", "SHUFFLE", "wf", "wt"),
                     ("node_linear_7", "MATRIX_MULTIPLY", "x wt", "y"))
    picked, blocks = prec.vision_fp32_layers(layers, depth=6, tail_blocks=1)
    assert [layers[i].name for i in picked] == ["node_linear_7"] and blocks == [5]


def test_rotary_and_norm_layers_stay_fp32():
    layers = _layers(
        ("inv_freq", "CONSTANT", "", "inv_freq"),
        ("node_unsqueeze", "SHUFFLE", "position_ids", "p1"), ("node_cast", "CAST", "p1", "pf"),
        ("node_matmul", "MATRIX_MULTIPLY", "inv_freq pf", "freqs"), ("node_transpose", "SHUFFLE", "freqs", "ft"),
        ("node_cat", "CONCATENATION", "ft ft", "emb"), ("node_cos", "UNARY", "emb", "cos"),
        ("node_sin", "UNARY", "emb", "sin"), ("node_mul_cos", "ELEMENTWISE", "q cos", "qc"),
        ("node_pow", "ELEMENTWISE", "x two", "x2"), ("node_mean", "REDUCE", "x2", "m"),
        ("node_add_eps", "ELEMENTWISE", "m eps", "me"), ("node_sqrt", "UNARY", "me", "r"),
        ("node_div", "ELEMENTWISE", "x r", "xn"), ("norm.weight", "CONSTANT", "", "norm.weight"),
        ("node_mul_w", "ELEMENTWISE", "xn norm.weight", "y"), ("node_q_proj", "MATRIX_MULTIPLY", "y wq", "q"))
    rotary = {layers[i].name for i in prec.rotary_fp32_layers(layers)}
    assert rotary == {"node_unsqueeze", "node_cast", "node_matmul", "node_transpose", "node_cat", "node_cos",
                      "node_sin"}
    norms = {layers[i].name for i in prec.norm_fp32_layers(layers)}
    assert norms == {"node_pow", "node_mean", "node_add_eps", "node_sqrt", "node_div", "node_mul_w"}


def test_the_embedded_bundle_is_an_onnx_runtime_bundle_and_is_refused():
    """The default ships with the fused decoder; docs/TENSORRT.md says how to re-export it for TensorRT."""
    from omniad_edge.bundle import DEFAULT_BUNDLE_DIR, load_bundle

    with pytest.raises(BundleError, match="--target tensorrt"):
        prec.check_bundle_precision(load_bundle(DEFAULT_BUNDLE_DIR).manifest)
