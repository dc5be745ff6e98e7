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
        prec.check_precision(BuildOptions(fp8=True), ORIN, "10.3.0", "fp16")
    prec.check_precision(BuildOptions(fp8=True), H100, "10.3.0", "fp16")


def test_int8_and_fp16_on_a_capable_gpu():
    prec.check_precision(BuildOptions(int8=True, fp16=True), ORIN, "10.3.0", "fp32")
    # every GPU TensorRT 10 runs on has int8 and fp16 (>= 6.1); older ones are refused as a whole
    with pytest.raises(BackendError, match="Tesla P4.*not supported"):
        prec.check_precision(BuildOptions(int8=True), P4, "10.3.0", "fp32")


def test_tensorrt_older_than_10_is_refused():
    with pytest.raises(BackendError, match="int64 inputs need TensorRT 10"):
        prec.check_precision(BuildOptions(), ORIN, "8.6.2", "fp32")


def test_gpu_generation_supported_by_the_tensorrt_version():
    prec.check_precision(BuildOptions(), V100, "10.3.0", "fp32")
    with pytest.raises(BackendError, match="not supported by TensorRT 10.5.0"):
        prec.check_precision(BuildOptions(), V100, "10.5.0", "fp32")


def test_fp16_on_fp32_bundle_needs_weak_typing():
    assert not prec.strongly_typed(BuildOptions(fp16=True), "fp32")
    assert prec.strongly_typed(BuildOptions(fp16=True), "fp16")
    assert prec.strongly_typed(BuildOptions(), "fp32")
    with pytest.raises(BackendError, match="--precision fp16"):
        prec.check_precision(BuildOptions(fp16=True), H100, "11.0.0", "fp32")


@pytest.mark.parametrize("precision, ok", [("fp32", True), ("fp16", True), ("int8", False), ("int4", False),
                                          ("bf16", False)])


def test_bundle_precision_for_tensorrt(precision, ok):
    m = qwen3b_manifest(precision=precision)
    if ok:
        prec.check_bundle_precision(m)
    else:
        with pytest.raises(BundleError, match=precision):
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


def test_vision_fp32_layers_pick_the_tail_mlps_only():
    names = ["/blocks.3/mlp/down_proj/MatMul", "/blocks.30/mlp/down_proj/MatMul", "/blocks.31/attn/qkv/MatMul",
             "visual.blocks.31.mlp.gate_proj", "/merger/mlp.0/MatMul", "node_MatMul_12", "/blocks.29/mlp/act"]
    assert prec.vision_fp32_layers(names, depth=32, tail_blocks=2) == [1, 3]
    assert prec.vision_fp32_layers(names, depth=32, tail_blocks=3) == [1, 3, 6]
    assert prec.vision_fp32_layers(names, depth=32, tail_blocks=0) == []
