"""Weight quantization of exported fp32 graphs with onnxruntime's own tools (graph I/O stays float32).

int8: dynamic quantization of MatMul weights (per-channel int8 weights, activations quantized at run time).
int4: weight-only (blocks of `block_size` along K, symmetric), activations stay float32; as ONNX Runtime's
MatMulNBits or as standard DequantizeLinear + MatMul ("qdq").
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from omniad_edge.errors import ExportError

__all__ = ["quantize_int8", "quantize_int4", "output_projection"]


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


def quantize_int4(model, block_size: int = 32, accuracy_level: int = 4, fmt: str = "matmulnbits",
                  keep_lm_head: bool = False):
    """fp32 graph (ModelProto, or path of a saved one) -> int4 weight-only ModelProto (symmetric, blocks along K).

    Every constant-weight MatMul or Gemm is quantized, the output projection (lm_head) included unless
    keep_lm_head: on a 0.5B model it is 545 MB of the 734 MiB a decode step reads when left in fp32.
    fmt "matmulnbits": ONNX Runtime's fused MatMulNBits; accuracy_level is its CPU compute type, 0 (unset:
    float32) .. 4 (int8 activations: onnxruntime-genai's CPU int4 choice, ~2x faster decode). fmt "qdq": standard
    DequantizeLinear (opset 21, INT4 blocks) feeding a plain MatMul, which other runtimes can read (ONNX Runtime
    fuses it back at load); accuracy_level does not apply there."""
    import onnx
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    if block_size < 16 or block_size & (block_size - 1):
        raise ExportError(f"int4 block size must be a power of two >= 16, got {block_size}")
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise ExportError(f"int4 accuracy level must be 0..4, got {accuracy_level!r}")
    if fmt not in ("matmulnbits", "qdq"):
        raise ExportError(f"int4 format must be 'matmulnbits' or 'qdq', got {fmt!r}")
    if isinstance(model, (str, Path)):
        model = onnx.load_model(str(model), load_external_data=True)
    head = output_projection(model.graph)
    if head is None:
        raise ExportError("int4: found no output projection (constant-weight MatMul/Gemm feeding the first output)")
    head.name = head.name or "lm_head"
    _constant_weights_as_matmul(model.graph, skip=head if keep_lm_head else None)
    quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=block_size, is_symmetric=True,
                                     accuracy_level=accuracy_level or None,
                                     nodes_to_exclude=[head.name] if keep_lm_head else None,
                                     quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                                     op_types_to_quantize=("MatMul",))
    quantizer.process()
    result = quantizer.model.model
    _check_changed(result, ("DequantizeLinear",) if fmt == "qdq" else ("MatMulNBits",), "int4")
    return result


# ops a projection's output may pass through on its way to the logits output
_PASS_THROUGH = ("Gather", "Slice", "Squeeze", "Unsqueeze", "Reshape", "Flatten", "Cast", "Identity")


def output_projection(graph):
    """The node computing the first graph output's projection (the lm_head of a decoder): walking back from that
    output through shape-only ops to a MatMul/Gemm whose weight is constant. None when there is none."""
    producers = {out: node for node in graph.node for out in node.output}
    node = producers.get(graph.output[0].name)
    while node is not None and node.op_type in _PASS_THROUGH:
        node = producers.get(node.input[0])
    if node is None or node.op_type not in ("MatMul", "Gemm"):
        return None
    return node if _constant_weight(graph, node, producers) is not None else None


def _constant_weight(graph, node, producers):
    """(initializer name, transposed) of node's 2-D constant B input, or None. The exporter leaves large weights as
    Gemm(transB=1) or MatMul(x, Transpose(W)): its constant folding skips big tensors."""
    inits = {i.name: i for i in graph.initializer}
    b = node.input[1]
    if b in inits and len(inits[b].dims) == 2:
        return b, False
    src = producers.get(b)
    if (node.op_type == "MatMul" and src is not None and src.op_type == "Transpose" and src.input[0] in inits
            and len(inits[src.input[0]].dims) == 2 and _attrs(src).get("perm", [1, 0]) == [1, 0]):
        return src.input[0], True
    return None


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _constant_weights_as_matmul(graph, skip=None) -> None:
    """Rewrite constant-weight Gemm and MatMul(x, Transpose(W)) as MatMul(x, W') with W' a [K, N] initializer,
    the only form the int4 quantizer takes. Gemm(x, W, C) keeps its bias as an Add after the MatMul."""
    import numpy as np
    from onnx import helper, numpy_helper

    producers = {out: node for node in graph.node for out in node.output}
    inits = {i.name: i for i in graph.initializer}
    replaced = set()
    for node in list(graph.node):
        if node is skip or node.op_type not in ("MatMul", "Gemm"):
            continue
        found = _constant_weight(graph, node, producers)
        if found is None:
            continue
        name, transposed = found
        if node.op_type == "Gemm":
            a = _attrs(node)
            if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or (len(node.input) > 2 and a.get("beta", 1.0) != 1.0):
                continue  # not a plain x @ W (+ C): leave it, it stays float32
            transposed = bool(a.get("transB", 0))
        elif not transposed:
            continue  # already the quantizer's form
        weight = numpy_helper.to_array(inits[name])
        if transposed:
            weight = np.ascontiguousarray(weight.T)
        new_name = f"{name}_kn"
        replaced.add(name)
        graph.initializer.append(numpy_helper.from_array(weight, new_name))
        outputs = list(node.output)
        bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None
        mm_out = f"{outputs[0]}_matmul" if bias else outputs[0]
        replacement = [helper.make_node("MatMul", [node.input[0], new_name], [mm_out], name=node.name)]
        if bias:
            replacement.append(helper.make_node("Add", [mm_out, bias], outputs, name=f"{node.name}_bias"))
        at = list(graph.node).index(node)
        graph.node.remove(node)
        for offset, new in enumerate(replacement):
            graph.node.insert(at + offset, new)
    _drop_unused(graph, replaced)


def _drop_unused(graph, weights: set) -> None:
    """Remove the rewritten weights' fp32 originals (and Transposes of them) once nothing else reads them."""
    used = {i for node in graph.node for i in node.input} | {o.name for o in graph.output}
    for node in [n for n in graph.node if n.op_type == "Transpose" and n.input[0] in weights]:
        if not set(node.output) & used:
            graph.node.remove(node)
    used = {i for node in graph.node for i in node.input} | {o.name for o in graph.output}
    for init in [i for i in graph.initializer if i.name in weights and i.name not in used]:
        graph.initializer.remove(init)


def _check_changed(model, op_types, precision: str) -> None:
    if not any(node.op_type in op_types for node in model.graph.node):
        raise ExportError(f"{precision} quantization changed no MatMul (no constant 2-D weights found in the graph)")
