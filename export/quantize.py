"""Weight quantization of exported fp32 graphs with onnxruntime's own tools (graph I/O stays float32).

int8: dynamic quantization of MatMul weights (per-channel int8 weights, activations quantized at run time).
int4: weight-only (blocks of `block_size` along K, symmetric), activations stay float32; as ONNX Runtime's
MatMulNBits or as standard DequantizeLinear + MatMul ("qdq").
Both walk the saved graph and quantize one weight at a time (_stream_quantize): a whole-graph quantizer holds the
float graph, its shape-inferred copies and the result in memory at once (an int4 export of an 8-block 3B-width
vision tower peaked at 5302 MiB with it, 1618 MiB without; benchmarks/results/export-memory-vision3b.md).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from omniad_edge.errors import ExportError

__all__ = ["quantize_int8_file", "quantize_int4", "quantize_int4_file", "fold_casts_file", "output_projection"]


def quantize_int4(model, block_size: int = 32, accuracy_level: int = 4, fmt: str = "matmulnbits",
                  keep_lm_head: bool = False):
    """fp32 graph (ModelProto, or path of a saved one) -> int4 weight-only ModelProto (quantize_int4_file)."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="omniad-q4-") as tmp:
        src = Path(model) if isinstance(model, (str, Path)) else Path(tmp, "in.onnx")
        if not isinstance(model, (str, Path)):
            onnx.save_model(model, str(src), save_as_external_data=True, all_tensors_to_one_file=True,
                            location="in.onnx.data")
        dst = Path(tmp, "out.onnx")
        quantize_int4_file(src, dst, block_size, accuracy_level, fmt, keep_lm_head, threshold=0)
        return onnx.load_model(str(dst), load_external_data=True)


def quantize_int4_file(src, dst, block_size: int = 32, accuracy_level: int = 4, fmt: str = "matmulnbits",
                       keep_lm_head: bool = False, threshold: int | None = None) -> list[Path]:
    """Saved float graph `src` -> int4 weight-only graph `dst` (symmetric, blocks along K), one weight in memory at
    a time; returns the files written (`dst`, plus `dst`.data when the weights exceed `threshold` bytes).

    Every constant-weight MatMul or Gemm is quantized, the output projection (lm_head) included unless
    keep_lm_head: on a 0.5B model it is 545 MB of the 734 MiB a decode step reads when left in fp32. A weight may
    reach its MatMul through Transpose and Cast (a bfloat16/float16 weight exported behind a Cast to float32,
    graphs._CastLinear); the cast is applied here, and any other Cast of a weight is folded into a float32 one.
    fmt "matmulnbits": ONNX Runtime's fused MatMulNBits; accuracy_level is its CPU compute type, 0 (unset:
    float32) .. 4 (int8 activations: onnxruntime-genai's CPU int4 choice, ~2x faster decode). fmt "qdq": standard
    DequantizeLinear (opset 21, INT4 blocks) feeding a plain MatMul, which other runtimes can read (ONNX Runtime
    fuses it back at load); accuracy_level does not apply there. Each weight goes through onnxruntime's own
    MatMulNBitsQuantizer as a one-node graph, so the numbers and node forms are that tool's."""
    import onnx

    if block_size < 16 or block_size & (block_size - 1):
        raise ExportError(f"int4 block size must be a power of two >= 16, got {block_size}")
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise ExportError(f"int4 accuracy level must be 0..4, got {accuracy_level!r}")
    if fmt not in ("matmulnbits", "qdq"):
        raise ExportError(f"int4 format must be 'matmulnbits' or 'qdq', got {fmt!r}")
    settings = dict(bits=4, block_size=block_size, is_symmetric=True, accuracy_level=accuracy_level or None,
                    quant_format=_quant_format(fmt), op_types_to_quantize=("MatMul",))
    head = output_projection(onnx.load_model(str(src), load_external_data=False).graph)  # the structure only
    if head is None:
        raise ExportError("int4: found no output projection (constant-weight MatMul/Gemm feeding the first output)")
    kept = head.output[0] if keep_lm_head else None

    def replace(node, weights, opsets, writer):
        if node.op_type not in ("MatMul", "Gemm") or node.output[0] == kept:
            return None
        return _int4_node(node, weights, settings, opsets, writer)

    check = ("DequantizeLinear",) if fmt == "qdq" else ("MatMulNBits",)
    return _stream_quantize(src, dst, replace, threshold, (check, "int4"))


def quantize_int8_file(src, dst, threshold: int | None = None) -> list[Path]:
    """Saved float graph `src` -> int8 dynamic graph `dst` (MatMul weights per-channel int8, activations quantized
    at run time to uint8), one weight in memory at a time; returns the files written as quantize_int4_file does.

    Each MatMul, or Gemm that the tool rewrites to one, with a constant weight (an initializer, or one seen through
    Transpose/Cast as for int4) goes through onnxruntime's quantize_dynamic as a one-node graph, with the settings a
    whole-graph call would take (per_channel, QInt8, MatMul only, MatMulConstBOnly); an activation several MatMuls
    read is quantized once, as that tool does, so the result is the whole-graph one (tests/test_quantize.py)
    without the whole float32 graph in memory. Not rewritten here: a Gemm without a constant weight (the tool turns
    it into MatMul + Add, same numbers)."""

    def replace(node, weights, opsets, writer):
        return _int8_node(node, weights, opsets, writer) if node.op_type in ("MatMul", "Gemm") else None

    return _stream_quantize(src, dst, replace, threshold, (("MatMulInteger", "DynamicQuantizeLinear"), "int8"))


def _stream_quantize(src, dst, replace, threshold: int | None, check=None) -> list[Path]:
    """The one pass every on-disk conversion makes: loads `src`'s structure only, offers each node to
    `replace(node, weights, opsets, writer)` (None keeps it, else the nodes that take its place; their weights
    already written by `writer`), folds the Casts left on constants, and writes every weight to `dst`'s data file
    as it goes, so one weight at a time is in memory. check: (op types, precision) that must appear."""
    import onnx
    from onnx import helper, numpy_helper

    src, dst = Path(src), Path(dst)
    model = onnx.load_model(str(src), load_external_data=False)
    graph = model.graph
    weights = _Weights(graph, src.parent)
    opsets = {o.domain: o.version for o in model.opset_import}
    with _DataWriter(dst) as writer:
        produced = {out for node in graph.node for out in node.output}
        for node in list(graph.node) if replace is not None else ():
            replacement = replace(node, weights, opsets, writer)
            if replacement is None:
                continue
            at = list(graph.node).index(node)
            graph.node.remove(node)
            produced.difference_update(node.output)
            # a node whose outputs exist already: the DynamicQuantizeLinear of an activation another MatMul read
            replacement = [new for new in replacement if not set(new.output) <= produced]
            produced.update(out for new in replacement for out in new.output)
            for offset, new in enumerate(replacement):
                graph.node.insert(at + offset, new)
        _drop_dead(graph)  # first: the Casts that fed quantized weights must not be folded into float32 copies
        # Cast(initializer) left over (norm weights, biases of a bfloat16 checkpoint; every weight for
        # fold_casts_file): written in the cast type, so the graph holds no Cast on a constant
        for node in [n for n in graph.node if n.op_type == "Cast" and n.input[0] in weights.inits]:
            dtype = helper.tensor_dtype_to_np_dtype(_attrs(node)["to"])
            writer.add(numpy_helper.from_array(weights.array(node.input[0]).astype(dtype), node.output[0]))
            graph.node.remove(node)
        used = {i for n in graph.node for i in n.input}
        kept = [i.name for i in graph.initializer if i.name in used]
        del graph.initializer[:]
        for name in kept:  # the source's remaining weights (norms, biases, small tables) move across as they are
            writer.add(weights.tensor(name))
        graph.initializer.extend(writer.written)
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(d, v) for d, v in sorted(opsets.items()))
    if check is not None:
        _check_changed(model, *check)
    return _save_streamed(model, dst, writer.path, threshold)


def _save_streamed(model, dst: Path, data: Path, threshold: int | None) -> list[Path]:
    """Writes the graph whose weights a _DataWriter put in `data`; small ones are made one self-contained file."""
    import onnx

    from .onnx_export import EXTERNAL_DATA_THRESHOLD

    onnx.save_model(model, str(dst))
    if data.stat().st_size <= (EXTERNAL_DATA_THRESHOLD if threshold is None else threshold):
        inline = onnx.load_model(str(dst), load_external_data=True)
        data.unlink()
        onnx.save_model(inline, str(dst))
        return [dst]
    return [dst, data]


def fold_casts_file(src, dst, threshold: int | None = None) -> list[Path]:
    """Saved graph whose weights sit behind Casts (graphs._CastLinear: a bfloat16 checkpoint exported to fp32 or
    fp16) -> the same graph with every Cast of a constant folded into a weight of the cast type, one weight in
    memory at a time; returns the files written as quantize_int4_file does. Converting a 3B decoder in torch
    instead holds all of it in float32 while it is exported (killed at 20.6 GB resident on a 24 GiB machine)."""
    return _stream_quantize(src, dst, None, threshold)


def _quant_format(fmt: str):
    from onnxruntime.quantization import QuantFormat

    return QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator


class _Weights:
    """Initializers of a saved graph, read one at a time (external data included), and the Transpose/Cast chains
    that lead from them to a MatMul."""

    def __init__(self, graph, base: Path):
        self.inits = {i.name: i for i in graph.initializer}
        self.producers = {out: node for node in graph.node for out in node.output}
        self.base = base

    def tensor(self, name: str):
        """The initializer as a TensorProto with its data inline."""
        from onnx import numpy_helper

        return numpy_helper.from_array(self.array(name), name)

    def array(self, name: str):
        from onnx import numpy_helper

        return numpy_helper.to_array(self.inits[name], str(self.base))

    def source(self, name: str):
        """(initializer, ops) when `name` is a 2-D initializer seen through Transpose([1, 0]) and Cast-to-float
        nodes (ops in the order they apply), else None."""
        ops = []
        while name not in self.inits:
            node = self.producers.get(name)
            if node is None or node.op_type not in ("Transpose", "Cast"):
                return None
            attrs = _attrs(node)
            if node.op_type == "Transpose" and attrs.get("perm", [1, 0]) != [1, 0]:
                return None
            if node.op_type == "Cast" and attrs.get("to") != 1:  # TensorProto.FLOAT
                return None
            ops.insert(0, node.op_type)
            name = node.input[0]
        return (name, ops) if len(self.inits[name].dims) == 2 else None

    def float_matrix(self, name: str, ops: list[str], transpose: bool):
        import numpy as np

        w = self.array(name)
        for op in ops:
            w = w.T if op == "Transpose" else w.astype(np.float32)
        w = w.T if transpose else w
        return np.ascontiguousarray(w, dtype=np.float32)


def _int4_node(node, weights: _Weights, settings: dict, opsets: dict, writer: "_DataWriter"):
    """The int4 replacement of one MatMul/Gemm with a constant weight (None when it has none or is not a plain
    x @ W (+ C)): onnxruntime's quantizer run over a one-node graph holding just that weight."""
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    found = weights.source(node.input[1])
    if found is None:
        return None
    name, ops = found
    transpose = False
    if node.op_type == "Gemm":
        a = _attrs(node)
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or (len(node.input) > 2 and a.get("beta", 1.0) != 1.0):
            return None  # not a plain x @ W (+ C): leave it, it stays float
        transpose = bool(a.get("transB", 0))
    elif not ops and weights.inits[name].data_type != TensorProto.FLOAT:
        return None
    bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None
    out = node.output[0]
    mm_out = f"{out}_matmul" if bias else out
    weight = numpy_helper.from_array(weights.float_matrix(name, ops, transpose), f"{node.name or out}_weight")
    matmul = helper.make_node("MatMul", [node.input[0], weight.name], [mm_out], name=node.name or out)
    quantizer = MatMulNBitsQuantizer(_one_node(matmul, weight, opsets), **settings)
    quantizer.process()
    nodes = _spliced(quantizer.model.model, opsets, writer)
    if bias:
        nodes.append(helper.make_node("Add", [mm_out, bias], [out], name=f"{node.name}_bias"))
    return nodes


def _int8_node(node, weights: _Weights, opsets: dict, writer: "_DataWriter"):
    """The int8 dynamic replacement of one MatMul/Gemm with a constant weight (None when it has none, or the tool
    leaves it): onnxruntime's quantize_dynamic run over a graph of that node alone, holding just its weight under
    the weight's own name, so nodes and initializers are named as a whole-graph run names them."""
    import onnx
    from onnx import TensorProto, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    found = weights.source(node.input[1])
    if found is None and node.input[1] in weights.inits:  # a constant of another rank, as the whole-graph tool takes
        found = node.input[1], []
    if found is None:
        return None
    name, ops = found
    if ops:  # seen through Transpose/Cast (a bfloat16 checkpoint): the float32 matrix the node reads
        weight = numpy_helper.from_array(weights.float_matrix(name, ops, False), name)
    elif weights.inits[name].data_type in (TensorProto.FLOAT, TensorProto.FLOAT16):
        weight = weights.tensor(name)
    else:
        return None
    single = _one_node(node, weight, opsets, weight.data_type)
    del weight
    with tempfile.TemporaryDirectory(prefix="omniad-q8-") as tmp:
        src, dst = Path(tmp, "in.onnx"), Path(tmp, "out.onnx")
        onnx.save_model(single, str(src), save_as_external_data=True, location="in.onnx.data")
        del single
        # external data: a weight over 2 GB (a 7B lm_head in float32) does not fit a protobuf
        quantize_dynamic(src, dst, op_types_to_quantize=["MatMul"], per_channel=True, weight_type=QuantType.QInt8,
                         use_external_data_format=True, extra_options={"MatMulConstBOnly": True})
        result = onnx.load_model(str(dst), load_external_data=True)
    if not any(n.op_type == "MatMulInteger" for n in result.graph.node):
        return None  # a Gemm the tool does not rewrite (alpha, beta or transA set): it stays float
    return _spliced(result, opsets, writer)


def _one_node(node, weight, opsets: dict, elem_type: int = 1):
    """A model running a copy of `node` alone with `weight` (a TensorProto) as its input 1 and its other inputs
    as graph inputs, at the source graph's opsets; float32 unless elem_type (a TensorProto data type) says."""
    from onnx import NodeProto, helper

    one = NodeProto()
    one.CopyFrom(node)
    one.input[1] = weight.name
    inputs = [helper.make_tensor_value_info(i, elem_type, None) for k, i in enumerate(one.input) if k != 1 and i]
    graph = helper.make_graph([one], "one", inputs, [helper.make_tensor_value_info(one.output[0], elem_type, None)],
                              [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])


def _spliced(result, opsets: dict, writer: "_DataWriter") -> list:
    """A quantizer's one-node result: its weights written (once per name: a weight two MatMuls share), its opsets
    merged, copies of its nodes returned (as _DataWriter.add, to leave nothing of `result` referenced)."""
    from onnx import NodeProto

    for opset in result.opset_import:
        opsets[opset.domain] = max(opsets.get(opset.domain, 0), opset.version)
    for init in result.graph.initializer:
        if init.name not in writer.names:
            writer.add(init)
    return [NodeProto.FromString(n.SerializeToString()) for n in result.graph.node]


def _drop_dead(graph) -> None:
    """Remove nodes nobody reads (the Transposes and Casts that fed quantized weights), until none is left."""
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not set(n.output) & used]
        if not dead:
            return
        for n in dead:
            graph.node.remove(n)


# tensors smaller than this stay in the graph file, as onnx's own external-data conversion keeps them: ONNX Runtime
# reads shape inputs at load time and refuses them in external data ("Cannot parse data from external tensors")
INLINE_BYTES = 1024


class _DataWriter:
    """Appends tensors to `dst`.data as they are made and keeps only their external-data references."""

    def __init__(self, dst: Path):
        self.path = dst.with_name(dst.name + ".data")
        self.written = []
        self.names = set()

    def __enter__(self):
        self.file = self.path.open("wb")
        return self

    def __exit__(self, *exc):
        self.file.close()

    def add(self, tensor):
        from onnx import TensorProto, numpy_helper

        data = tensor.raw_data if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).tobytes()
        self.names.add(tensor.name)
        if len(data) < INLINE_BYTES:  # shape inputs (Unsqueeze axes, Reshape shapes) must stay in the graph
            ref = TensorProto(name=tensor.name, dims=tensor.dims, data_type=tensor.data_type, raw_data=data)
            self.written.append(ref)
            return ref
        offset = self.file.tell()
        pad = -offset % 64
        self.file.write(b"\0" * pad)
        self.file.write(data)
        # a new message holding only the reference: protobuf frees a message's bytes with the message (its arena),
        # not on ClearField, so keeping `tensor` (or any part of the message it came from) would keep every weight
        # written so far in memory (20 GB for a 3B float32 decoder)
        ref = TensorProto(name=tensor.name, dims=tensor.dims, data_type=tensor.data_type,
                          data_location=TensorProto.EXTERNAL)
        for key, value in (("location", self.path.name), ("offset", offset + pad), ("length", len(data))):
            ref.external_data.add(key=key, value=str(value))
        self.written.append(ref)
        return ref


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
    return node if _Weights(graph, Path()).source(node.input[1]) is not None else None


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _check_changed(model, op_types, precision: str) -> None:
    if not any(node.op_type in op_types for node in model.graph.node):
        raise ExportError(f"{precision} quantization changed no MatMul (no constant 2-D weights found in the graph)")
