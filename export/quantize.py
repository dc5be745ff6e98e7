"""Weight quantization of exported fp32 graphs with onnxruntime's own tools (graph I/O stays float32).

int8: dynamic quantization of MatMul weights (per-channel int8 weights, activations quantized at run time).
int4: weight-only (blocks of `block_size` along K, symmetric), activations stay float32; as ONNX Runtime's
MatMulNBits or as standard DequantizeLinear + MatMul ("qdq").
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from omniad_edge.errors import ExportError

__all__ = ["quantize_int8", "quantize_int4"]


def quantize_int8(model):
    """fp32 graph (ModelProto, or path of a saved one) -> int8 dynamic ModelProto (MatMul weights only)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="omniad-q8-") as tmp:
        if isinstance(model, (str, Path)):
            src = Path(model)
        else:
            src = Path(tmp, "in.onnx")
            onnx.save_model(model, str(src), save_as_external_data=True, all_tensors_to_one_file=True,
                            location="in.onnx.data")
        dst = Path(tmp, "out.onnx")
        # external data always: the quantizer cannot write a >2 GB protobuf, and it costs nothing when small
        quantize_dynamic(src, dst, op_types_to_quantize=["MatMul"], per_channel=True, weight_type=QuantType.QInt8,
                         use_external_data_format=True, extra_options={"MatMulConstBOnly": True})
        result = onnx.load_model(str(dst), load_external_data=True)
    _check_changed(result, ("MatMulInteger", "DynamicQuantizeLinear"), "int8")
    return result


def quantize_int4(model, block_size: int = 32, accuracy_level: int = 0, fmt: str = "matmulnbits"):
    """fp32 graph (ModelProto, or path of a saved one) -> int4 weight-only ModelProto (symmetric, blocks along K).

    fmt "matmulnbits": ONNX Runtime's fused MatMulNBits; accuracy_level is its CPU compute type, 0 (unset:
    float32) .. 4 (int8 activations, fastest). fmt "qdq": standard DequantizeLinear (opset 21, INT4 blocks) feeding
    a plain MatMul, which other runtimes can read (ONNX Runtime fuses it back at load)."""
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    if block_size < 16 or block_size & (block_size - 1):
        raise ExportError(f"int4 block size must be a power of two >= 16, got {block_size}")
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise ExportError(f"int4 accuracy level must be 0..4, got {accuracy_level!r}")
    if fmt not in ("matmulnbits", "qdq"):
        raise ExportError(f"int4 format must be 'matmulnbits' or 'qdq', got {fmt!r}")
    quantizer = MatMulNBitsQuantizer(str(model) if isinstance(model, Path) else model, bits=4, block_size=block_size,
                                     is_symmetric=True, accuracy_level=accuracy_level or None,
                                     quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                                     op_types_to_quantize=("MatMul",))
    quantizer.process()
    result = quantizer.model.model
    _check_changed(result, ("DequantizeLinear",) if fmt == "qdq" else ("MatMulNBits",), "int4")
    return result


def _check_changed(model, op_types, precision: str) -> None:
    if not any(node.op_type in op_types for node in model.graph.node):
        raise ExportError(f"{precision} quantization changed no MatMul (no constant 2-D weights found in the graph)")
