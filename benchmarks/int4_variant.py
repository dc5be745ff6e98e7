"""What the int4 decoder would cost with onnxruntime-genai's int4 settings: a copy of a bundle's int4 decoder with
(1) the output projection quantized too (the exporter leaves the tied lm_head as an fp32 Gemm with transB=1, 545 MB
of the 734 MiB a 0.5B-sized decode step reads) and (2) MatMulNBits accuracy_level 4 (int8 activations, genai's CPU
default). An experiment for the exporter, timed with graph_step.py; the runtime never loads this file.

    nice -n 5 python benchmarks/int4_variant.py BUNDLE_INT4/decoder.onnx OUT.onnx
"""
from __future__ import annotations

import sys

import numpy as np


def main(argv=None) -> int:
    import onnx
    from onnx import helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    src, dst = (argv or sys.argv[1:])[:2]
    model = onnx.load(src)
    inits = {i.name: i for i in model.graph.initializer}
    for node in list(model.graph.node):
        if node.op_type == "MatMulNBits":
            for a in [a for a in node.attribute if a.name == "accuracy_level"]:
                node.attribute.remove(a)
            node.attribute.append(helper.make_attribute("accuracy_level", 4))
        elif node.op_type == "Gemm" and node.input[1] in inits and len(node.input) == 2:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("transB") != 1 or attrs.get("transA", 0) != 0 or attrs.get("alpha", 1.0) != 1.0:
                continue
            # Gemm(x, W, transB=1) == MatMul(x, W^T): a constant [K, N] weight the quantizer can take
            weight = numpy_helper.to_array(inits[node.input[1]])
            model.graph.initializer.remove(inits[node.input[1]])
            model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight.T),
                                                                   node.input[1] + "_t"))
            matmul = helper.make_node("MatMul", [node.input[0], node.input[1] + "_t"], list(node.output),
                                      name=node.name + "_matmul")
            at = list(model.graph.node).index(node)
            model.graph.node.remove(node)
            model.graph.node.insert(at, matmul)
    quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=32, is_symmetric=True, accuracy_level=4,
                                     op_types_to_quantize=("MatMul",))
    quantizer.process()
    onnx.save_model(quantizer.model.model, dst, save_as_external_data=True,
                    location=dst.rsplit("/", 1)[-1] + ".data")
    print(dst)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
