"""A stand-in for the `tensorrt` module and the CUDA runtime, so the build and backend code runs on CPU.

What it checks is TensorRT's documented contract as the backend relies on it (NvInfer.h, NvInferRuntime.h and the
Python bindings of 10.x and 11.x): optimisation profiles cover every input with min <= opt <= max and ranks matching
the graph, precision flags are refused on strongly typed networks, input shapes at run time lie inside the active
profile, every I/O tensor has a shape and a 256-byte aligned address, and device addresses stay inside allocations.
It fails the way the real bindings fail: RuntimeError from IOptimizationProfile.set_shape, set_input_shape and
set_optimization_profile_async, -1 from add_optimization_profile, None from create_timing_cache on a corrupt blob,
False from set_tensor_address. The parser names layers as onnx-tensorrt does (a constant layer per initializer,
named after it; compute layers named after their node), and `network.get_layer` returns plain ILayer objects
(`to_type`, `op` only after the documented `layer.__class__ = trt.IQuantizeLayer` downcast). Version 11.x has no
weak typing: no FP16/INT8/FP8/OBEY_PRECISION_CONSTRAINTS flags, no `layer.precision`, every network strongly typed.
`trt.faults` names calls to fail on purpose, for the error paths no valid input reaches. Engines "execute" by running
the ONNX graph with ONNX Runtime on the bytes at the bound addresses; "device" memory is host memory filled with 0xFF
(NaN as float32) like uninitialised memory, 256-byte aligned like cudaMalloc's. CUDA graph capture records the
enqueued work with the shapes and addresses of capture time and replays it on launch. It proves the code's wiring,
not TensorRT's kernels: the GPU test does that where a GPU exists.
"""
from __future__ import annotations

import ctypes
import json
from enum import IntEnum
from types import SimpleNamespace

import numpy as np

from omniad_edge.tensorrt.cuda import DeviceInfo


class FakeCuda:
    def __init__(self, *, name="Fake Orin", cc=(8, 7), total=8 << 30, free=6 << 30, integrated=True):
        self.info = DeviceInfo(name=name, compute_capability=cc, total_memory=total, free_memory=free,
                               integrated=integrated)
        self.buffers: dict[int, ctypes.Array] = {}
        self._raw: dict[int, ctypes.Array] = {}
        self.capturing: list | None = None
        self.graphs: dict[int, list] = {}
        self.counts = {"malloc": 0, "host_alloc": 0, "launch": 0}
        self.events: list[str] = []  # enqueue / synchronize / begin_capture, in order

    # memory
    def device_info(self, index=0):
        return self.info

    def mem_get_info(self):
        return self.info.free_memory, self.info.total_memory

    def _new(self, nbytes):
        # cudaMalloc and cudaHostAlloc return addresses aligned to at least 256 bytes
        size = max(int(nbytes), 1)
        raw = (ctypes.c_char * (size + ALIGNMENT))()
        ptr = ctypes.addressof(raw) + (-ctypes.addressof(raw)) % ALIGNMENT
        buf = (ctypes.c_char * size).from_address(ptr)
        ctypes.memset(buf, 0xFF, size)
        self.buffers[ptr] = buf
        self._raw[ptr] = raw
        return ptr

    def malloc(self, nbytes):
        self.counts["malloc"] += 1
        return self._new(nbytes)

    def host_alloc(self, nbytes):
        self.counts["host_alloc"] += 1
        return self._new(nbytes)

    def free(self, ptr):
        del self.buffers[ptr]
        del self._raw[ptr]

    free_host = free

    def check(self, ptr, nbytes):
        for base, buf in self.buffers.items():
            if base <= ptr and ptr + nbytes <= base + len(buf):
                return
        raise AssertionError(f"access of {nbytes} bytes at {ptr:#x} is outside every allocation")

    def view(self, ptr, shape, dtype):
        count = int(np.prod(shape))
        nbytes = count * np.dtype(dtype).itemsize
        self.check(ptr, nbytes)
        raw = (ctypes.c_char * max(nbytes, 1)).from_address(ptr)
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    def _op(self, fn):
        if self.capturing is not None:
            self.capturing.append(fn)
        else:
            fn()

    def memset_async(self, ptr, value, nbytes, stream):
        self.check(ptr, nbytes)
        self._op(lambda: ctypes.memset(ptr, value, nbytes))

    def memcpy_async(self, dst, src, nbytes, kind, stream):
        self.check(dst, nbytes)
        self.check(src, nbytes)
        self._op(lambda: ctypes.memmove(dst, src, nbytes))

    def memcpy2d_async(self, dst, dpitch, src, spitch, width, height, kind, stream):
        assert width <= dpitch and width <= spitch, "pitch smaller than width"
        for row in range(height):
            self.memcpy_async(dst + row * dpitch, src + row * spitch, width, kind, stream)

    # streams and graphs
    def stream_create(self):
        return 7

    def stream_destroy(self, stream):
        pass

    def stream_synchronize(self, stream):
        assert self.capturing is None, "synchronize during capture is illegal"
        self.events.append("synchronize")

    def begin_capture(self, stream):
        self.events.append("begin_capture")
        self.capturing = []

    def end_capture(self, stream):
        ops, self.capturing = self.capturing, None
        handle = 1000 + len(self.graphs)
        self.graphs[handle] = ops
        return handle

    def graph_launch(self, handle, stream):
        self.counts["launch"] += 1
        for op in self.graphs[handle]:
            op()

    def graph_destroy(self, handle):
        self.graphs.pop(handle, None)


ALIGNMENT = 256  # NvInferRuntime.h, IExecutionContext::setTensorAddress: addresses must be 256-byte aligned


class DataType(IntEnum):  # values of nvinfer1::DataType
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9


_NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8, DataType.INT32: np.int32,
       DataType.BOOL: np.bool_, DataType.INT64: np.int64}
_ORT_TYPES = {"tensor(float)": DataType.FLOAT, "tensor(int64)": DataType.INT64, "tensor(float16)": DataType.HALF}


_LAYER_TYPES = {  # ONNX op -> the TensorRT layer type onnx-tensorrt imports it as (the compute layer of the node)
    **dict.fromkeys(("MatMul", "Gemm"), "MATRIX_MULTIPLY"),
    **dict.fromkeys(("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Equal", "Less", "Greater", "And", "Or",
                     "Where"), "ELEMENTWISE"),
    **dict.fromkeys(("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"), "REDUCE"),
    **dict.fromkeys(("Cos", "Sin", "Sqrt", "Exp", "Log", "Neg", "Reciprocal", "Abs", "Erf", "Sigmoid", "Tanh"),
                    "UNARY"),
    **dict.fromkeys(("Reshape", "Transpose", "Unsqueeze", "Squeeze", "Flatten", "Expand"), "SHUFFLE"),
    "Cast": "CAST", "QuantizeLinear": "QUANTIZE", "DequantizeLinear": "DEQUANTIZE", "Constant": "CONSTANT",
    "Softmax": "SOFTMAX", "Concat": "CONCATENATION", "Slice": "SLICE", "Gather": "GATHER",
}
_ONNX_TO_TRT = {1: DataType.FLOAT, 10: DataType.HALF, 3: DataType.INT8, 6: DataType.INT32, 7: DataType.INT64,
                9: DataType.BOOL, 2: DataType.UINT8, 17: DataType.FP8, 16: DataType.BF16, 22: DataType.INT4}
WEAK_TYPING_FLAGS = ("FP16", "INT8", "FP8", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS")


def _major(version: str) -> int:
    return int(version.split(".")[0])


def make_fake_tensorrt(cuda: FakeCuda, version: str = "10.3.0"):
    """A namespace with the parts of the tensorrt module that omniad_edge uses, as TensorRT `version` has them."""
    import onnx
    from onnx import numpy_helper

    weak = _major(version) < 11  # TensorRT 11 removed weak typing
    trt = SimpleNamespace(__version__=version, DataType=DataType, float32=DataType.FLOAT, float16=DataType.HALF)
    trt.NetworkDefinitionCreationFlag = IntEnum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 5})
    trt.BuilderFlag = IntEnum("BuilderFlag", ("TF32", "SPARSE_WEIGHTS", "DIRECT_IO")
                              + (WEAK_TYPING_FLAGS if weak else ()))
    trt.MemoryPoolType = IntEnum("MemoryPoolType", "WORKSPACE")
    trt.LayerType = IntEnum("LayerType", sorted(set(_LAYER_TYPES.values()) | {"OTHER"}))
    trt.UnaryOperation = IntEnum("UnaryOperation", "EXP LOG SQRT RECIP ABS NEG SIN COS TANH ERF SIGMOID")
    trt.TensorIOMode = IntEnum("TensorIOMode", "INPUT OUTPUT")
    trt.ExecutionContextAllocationStrategy = IntEnum("ExecutionContextAllocationStrategy",
                                                     "STATIC ON_PROFILE_CHANGE USER_MANAGED")
    trt.nptype = lambda dtype: _NP[dtype]
    trt.log = []  # (what, details) of build calls, for assertions
    trt.faults = set()  # call names to fail the way the real binding fails

    def fault(name):
        return name in trt.faults

    _UNARY = {"Exp": "EXP", "Log": "LOG", "Sqrt": "SQRT", "Reciprocal": "RECIP", "Abs": "ABS", "Neg": "NEG",
              "Sin": "SIN", "Cos": "COS", "Tanh": "TANH", "Erf": "ERF", "Sigmoid": "SIGMOID"}

    class Logger:
        WARNING = 2

        def __init__(self, severity=2):
            self.severity = severity

    class IProgressMonitor:
        def __init__(self):
            pass

    class ITensor:
        def __init__(self, name, dtype=DataType.FLOAT):
            self.name, self.dtype = name, dtype

    class ILayer:
        """What network.get_layer returns: the base interface only (no to_type, no op)."""

        def __init__(self, name, kind, inputs, outputs, **extra):
            self.name, self.type = name, trt.LayerType[kind]
            self._inputs, self._outputs = inputs, outputs
            self._extra = extra
            self._precision = None
            self.output_types = {}

        @property
        def num_inputs(self):
            return len(self._inputs)

        @property
        def num_outputs(self):
            return len(self._outputs)

        def get_input(self, index):
            return self._inputs[index]

        def get_output(self, index):
            return self._outputs[index]

        def set_output_type(self, index, dtype):
            self.output_types[index] = dtype

        def __setattr__(self, name, value):  # a pybind11 object: no new attributes
            if name not in _SETTABLE and not (weak and name == "precision"):
                raise AttributeError(f"'tensorrt.ILayer' object has no attribute '{name}'")
            object.__setattr__(self, name, value)

    _SETTABLE = {"name", "type", "_inputs", "_outputs", "_extra", "_precision", "output_types", "__class__"}

    if weak:
        def _get_precision(self):
            return self._precision if self._precision is not None else DataType.FLOAT

        def _set_precision(self, dtype):
            self._precision = dtype

        ILayer.precision = property(_get_precision, _set_precision)  # gone in TensorRT 11

    class IQuantizeLayer(ILayer):
        to_type = property(lambda self: self._extra["to_type"])

    class IDequantizeLayer(ILayer):
        to_type = property(lambda self: self._extra["to_type"])

    class IUnaryLayer(ILayer):
        op = property(lambda self: self._extra["op"])

    class Network:
        def __init__(self, flags):
            # TensorRT 11 accepts the STRONGLY_TYPED flag and ignores it: every network is strongly typed
            self.strongly_typed = not weak or bool(flags & (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
            self.inputs, self.layers, self.path = [], [], None

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

        @property
        def num_layers(self):
            return len(self.layers)

        def get_layer(self, i):
            return self.layers[i]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        def parse_from_file(self, path):
            try:
                model = onnx.load(path, load_external_data=False)
            except Exception as exc:  # onnx raises several types for unreadable files
                self.errors.append(f"cannot read {path}: {exc}")
                return False
            inits = {t.name: t for t in model.graph.initializer}
            tensors = {}
            for value in model.graph.input:
                if value.name in inits:
                    continue
                dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
                self.network.inputs.append(SimpleNamespace(name=value.name, shape=tuple(dims)))
                tensors[value.name] = ITensor(value.name, _ONNX_TO_TRT.get(value.type.tensor_type.elem_type,
                                                                           DataType.FLOAT))
            layers = []

            def tensor(name):
                if name not in tensors and name in inits:  # a constant layer per initializer, named after it
                    tensors[name] = ITensor(name, _ONNX_TO_TRT.get(inits[name].data_type, DataType.FLOAT))
                    layers.append(ILayer(name, "CONSTANT", [], [tensors[name]]))
                return tensors.setdefault(name, ITensor(name))

            for node in model.graph.node:
                if node.domain not in ("", "ai.onnx"):
                    self.errors.append(f"{node.name}: no importer for operator {node.domain}:{node.op_type}")
                    return False
                inputs = [tensor(n) for n in node.input if n]
                kind = _LAYER_TYPES.get(node.op_type, "OTHER")
                extra = {}
                if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                    zero = node.input[2] if len(node.input) > 2 else ""
                    if zero in inits and numpy_helper.to_array(inits[zero]).astype(np.float64).any():
                        self.errors.append(f"{node.name}: TensorRT only supports symmetric quantization; the zero "
                                           "point must be all zeros")
                        return False
                    quantized = inits[zero].data_type if zero in inits else (
                        inits[node.input[0]].data_type if node.input[0] in inits else 3)
                    extra["to_type"] = (_ONNX_TO_TRT.get(quantized, DataType.INT8) if node.op_type ==
                                        "QuantizeLinear" else DataType.FLOAT)
                if kind == "UNARY":
                    extra["op"] = trt.UnaryOperation[_UNARY[node.op_type]]
                out_type = extra.get("to_type", DataType.FLOAT)
                outputs = [tensors.setdefault(n, ITensor(n, out_type)) for n in node.output]
                # onnx-tensorrt names a node's layer after the node (a generated name when it has none)
                layers.append(ILayer(node.name or f"node_of_{node.output[0]}", kind, inputs, outputs, **extra))
            self.network.layers = layers
            self.network.path = path
            return True

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

    TIMING_MAGIC = b"FAKE-TRT-TIMING-CACHE " + version.encode() + b"\n"

    class TimingCache:
        def __init__(self, data):
            self.data = bytes(data)

        def serialize(self):
            return self.data

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, low, opt, high):
            low, opt, high = tuple(low), tuple(opt), tuple(high)
            if fault("set_shape") or len(low) != len(opt) or len(opt) != len(high) or \
                    not all(a <= b <= c for a, b, c in zip(low, opt, high)):
                raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
            self.shapes[name] = (low, opt, high)

    class Config:
        def __init__(self):
            self.flags = {trt.BuilderFlag.TF32}  # TensorRT enables TF32 by default
            self.profiles, self.cache, self.progress_monitor, self.pool = [], None, None, {}

        def set_flag(self, flag):
            self.flags.add(flag)

        def clear_flag(self, flag):
            self.flags.discard(flag)

        def set_memory_pool_limit(self, pool, size):
            self.pool[pool] = size

        def create_timing_cache(self, data):
            data = bytes(data)
            if data and not data.startswith(b"FAKE-TRT-TIMING-CACHE "):
                return None  # ITimingCache* nullptr: the blob is not a timing cache
            return TimingCache(data or TIMING_MAGIC)

        def set_timing_cache(self, cache, ignore_mismatch):
            if not isinstance(cache, TimingCache):
                raise TypeError("set_timing_cache(): incompatible function arguments")
            if not cache.data.startswith(TIMING_MAGIC) and not ignore_mismatch:
                return False  # from another TensorRT version or device
            self.cache = cache
            return True

        def add_optimization_profile(self, profile):
            if fault("add_optimization_profile") or not profile.shapes:
                return -1  # an invalid profile
            self.profiles.append(profile)
            return len(self.profiles) - 1

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags=0):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            precision = {getattr(trt.BuilderFlag, f) for f in ("FP16", "INT8", "FP8") if hasattr(trt.BuilderFlag, f)}
            if network.strongly_typed and precision & config.flags:
                return None  # TensorRT: precision flags are not allowed on strongly typed networks
            pinned = [layer for layer in network.layers if layer._precision is not None]
            if pinned and trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS not in config.flags:
                return None  # the fake only honours pins TensorRT is told to obey
            if fault("build_serialized_network") or not config.profiles:
                return None
            for profile in config.profiles:
                for value in network.inputs:
                    assert value.name in profile.shapes, f"profile lacks input {value.name}"
                    for shape in profile.shapes[value.name]:
                        assert len(shape) == len(value.shape), f"{value.name}: rank {len(shape)} vs graph"
                        for got, fixed in zip(shape, value.shape):
                            assert fixed < 0 or got == fixed, f"{value.name}: {shape} vs graph {value.shape}"
            monitor = config.progress_monitor
            if monitor is not None:
                monitor.phase_start("Building engine", None, 20)
                for step in range(20):
                    assert monitor.step_complete("Building engine", step) is True
                monitor.phase_finish("Building engine")
            record = {"onnx": network.path, "flags": sorted(f.name for f in config.flags),
                      "strongly_typed": network.strongly_typed,
                      "profiles": [{k: [list(s) for s in v] for k, v in p.shapes.items()} for p in config.profiles],
                      "pinned": [[layer.name, layer.type.name] for layer in pinned]}
            trt.log.append(("build", record))
            if config.cache is not None:
                config.cache.data += b"t"
            return json.dumps(record).encode()

    class Engine:
        def __init__(self, record):
            import onnxruntime as ort

            self.record = record
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = ort.InferenceSession(record["onnx"], options, providers=["CPUExecutionProvider"])
            self.inputs = {i.name: _ORT_TYPES[i.type] for i in self.session.get_inputs()}
            self.outputs = {o.name: _ORT_TYPES[o.type] for o in self.session.get_outputs()}
            self.names = list(self.inputs) + list(self.outputs)
            self.num_optimization_profiles = len(record["profiles"])
            self.device_memory_size_v2 = 1 << 20

        @property
        def num_io_tensors(self):
            return len(self.names)

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name in self.inputs else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return self.inputs.get(name, self.outputs.get(name))

        def get_tensor_profile_shape(self, name, profile):
            return [tuple(s) for s in self.record["profiles"][profile][name]]

        def get_device_memory_size_for_profile_v2(self, profile):
            return (1 << 20) >> profile

        def create_execution_context(self, strategy=None):
            return Context(self)

    class Context:
        def __init__(self, engine):
            self.engine, self.profile = engine, 0
            self.shapes, self.addresses = {}, {}

        def set_optimization_profile_async(self, index, stream):
            if fault("set_optimization_profile_async") or not 0 <= index < self.engine.num_optimization_profiles:
                raise RuntimeError("Error in set optimization profile async.")
            self.profile = index
            return True

        def set_input_shape(self, name, shape):
            low, _, high = self.engine.get_tensor_profile_shape(name, self.profile) if name in self.engine.inputs \
                else ((), (), ())
            if fault("set_input_shape") or name not in self.engine.inputs or len(shape) != len(low) or \
                    not all(a <= s <= c for a, s, c in zip(low, shape, high)):
                raise RuntimeError(f"Error in set input shape of {name}: {tuple(shape)} is outside the profile.")
            self.shapes[name] = tuple(shape)
            return True

        def set_tensor_address(self, name, address):
            if name not in self.engine.names or not address or address % ALIGNMENT:
                return False  # IExecutionContext::setTensorAddress: unknown name, null or misaligned address
            self.addresses[name] = address
            return True

        def execute_async_v3(self, stream):
            shapes, addresses = dict(self.shapes), dict(self.addresses)
            missing = [n for n in self.engine.names if n not in addresses] + \
                      [n for n in self.engine.inputs if n not in shapes]
            if missing or fault("execute_async_v3"):
                return False
            cuda.events.append("enqueue")
            cuda._op(lambda: self._run(shapes, addresses))
            return True

        def _run(self, shapes, addresses):
            feeds = {n: cuda.view(addresses[n], shapes[n], _NP[t]).copy() for n, t in self.engine.inputs.items()}
            outputs = self.engine.session.run(list(self.engine.outputs), feeds)
            for (name, dtype), value in zip(self.engine.outputs.items(), outputs):
                target = cuda.view(addresses[name], value.shape, _NP[dtype])
                target[...] = value

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            return Engine(json.loads(bytes(data)))

    trt.Logger, trt.IProgressMonitor, trt.Builder, trt.OnnxParser, trt.Runtime = (
        Logger, IProgressMonitor, Builder, OnnxParser, Runtime)
    trt.ILayer, trt.IQuantizeLayer, trt.IDequantizeLayer, trt.IUnaryLayer = (
        ILayer, IQuantizeLayer, IDequantizeLayer, IUnaryLayer)
    return trt
