"""A stand-in for the `tensorrt` module and the CUDA runtime, so the build and backend code runs on CPU.

What it checks is TensorRT 10's documented contract as the backend relies on it: optimisation profiles cover every
input with min <= opt <= max and ranks matching the graph, precision flags are refused on strongly typed networks,
input shapes at run time lie inside the active profile, every I/O tensor has a shape and an address, and device
addresses stay inside allocations. Engines "execute" by running the ONNX graph with ONNX Runtime on the bytes at the
bound addresses; "device" memory is host memory filled with 0xFF (NaN as float32) like uninitialised memory.
CUDA graph capture records the enqueued work with the shapes and addresses of capture time and replays it on
launch. It proves the code's wiring, not TensorRT's kernels: the GPU test does that where a GPU exists.
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
        self.capturing: list | None = None
        self.graphs: dict[int, list] = {}
        self.counts = {"malloc": 0, "host_alloc": 0, "launch": 0}

    # memory
    def device_info(self, index=0):
        return self.info

    def mem_get_info(self):
        return self.info.free_memory, self.info.total_memory

    def _new(self, nbytes):
        buf = (ctypes.c_char * max(int(nbytes), 1))()
        ctypes.memset(buf, 0xFF, len(buf))
        ptr = ctypes.addressof(buf)
        self.buffers[ptr] = buf
        return ptr

    def malloc(self, nbytes):
        self.counts["malloc"] += 1
        return self._new(nbytes)

    def host_alloc(self, nbytes):
        self.counts["host_alloc"] += 1
        return self._new(nbytes)

    def free(self, ptr):
        del self.buffers[ptr]

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

    def begin_capture(self, stream):
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


class DataType(IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    FP8 = 6
    INT64 = 8


_NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8, DataType.INT32: np.int32,
       DataType.BOOL: np.bool_, DataType.INT64: np.int64}
_ORT_TYPES = {"tensor(float)": DataType.FLOAT, "tensor(int64)": DataType.INT64, "tensor(float16)": DataType.HALF}


def make_fake_tensorrt(cuda: FakeCuda, version: str = "10.3.0"):
    """A namespace with the parts of the tensorrt module that omniad_edge uses."""
    import onnx

    trt = SimpleNamespace(__version__=version, DataType=DataType, float32=DataType.FLOAT)
    trt.NetworkDefinitionCreationFlag = IntEnum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 5})
    trt.BuilderFlag = IntEnum("BuilderFlag", "FP16 INT8 TF32 FP8 OBEY_PRECISION_CONSTRAINTS")
    trt.MemoryPoolType = IntEnum("MemoryPoolType", "WORKSPACE")
    trt.LayerType = IntEnum("LayerType", "QUANTIZE OTHER")
    trt.TensorIOMode = IntEnum("TensorIOMode", "INPUT OUTPUT")
    trt.ExecutionContextAllocationStrategy = IntEnum("ExecutionContextAllocationStrategy",
                                                     "STATIC ON_PROFILE_CHANGE USER_MANAGED")
    trt.nptype = lambda dtype: _NP[dtype]
    trt.log = []  # (what, details) of build calls, for assertions

    class Logger:
        WARNING = 2

        def __init__(self, severity=2):
            self.severity = severity

    class IProgressMonitor:
        def __init__(self):
            pass

    class Layer:
        def __init__(self, node, init_types):
            self.name = node.name
            self.type = trt.LayerType.QUANTIZE if node.op_type == "QuantizeLinear" else trt.LayerType.OTHER
            zero = node.input[2] if len(node.input) > 2 else ""
            self.to_type = DataType.FP8 if init_types.get(zero) == onnx.TensorProto.FLOAT8E4M3FN else DataType.INT8
            self.precision = None
            self.output_types = {}
            self.num_outputs = len(node.output)

        def set_output_type(self, index, dtype):
            self.output_types[index] = dtype

        def get_output(self, index):
            return SimpleNamespace(dtype=self.output_types.get(index, DataType.FLOAT))

    class Network:
        def __init__(self, flags):
            self.strongly_typed = bool(flags & (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
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
            init_types = {t.name: t.data_type for t in model.graph.initializer}
            names = {t.name for t in model.graph.initializer}
            for value in model.graph.input:
                if value.name in names:
                    continue
                dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
                self.network.inputs.append(SimpleNamespace(name=value.name, shape=tuple(dims)))
            self.network.layers = [Layer(n, init_types) for n in model.graph.node]
            self.network.path = path
            return True

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

    class TimingCache:
        def __init__(self, data):
            self.data = bytes(data)

        def serialize(self):
            return self.data + b"+"

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, low, opt, high):
            low, opt, high = tuple(low), tuple(opt), tuple(high)
            assert len(low) == len(opt) == len(high), f"{name}: ranks differ"
            assert all(a <= b <= c for a, b, c in zip(low, opt, high)), f"{name}: not min <= opt <= max"
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
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return True

        def add_optimization_profile(self, profile):
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
            precision = {trt.BuilderFlag.FP16, trt.BuilderFlag.INT8, trt.BuilderFlag.FP8} & config.flags
            if network.strongly_typed and precision:
                return None  # TensorRT: precision flags are not allowed on strongly typed networks
            assert config.profiles, "an engine with dynamic shapes needs an optimisation profile"
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
                      "pinned": [layer.name for layer in network.layers if layer.precision is not None]}
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
            if not 0 <= index < self.engine.num_optimization_profiles:
                return False
            self.profile = index
            return True

        def set_input_shape(self, name, shape):
            if name not in self.engine.inputs:
                return False
            low, _, high = self.engine.get_tensor_profile_shape(name, self.profile)
            if len(shape) != len(low) or not all(a <= s <= c for a, s, c in zip(low, shape, high)):
                return False
            self.shapes[name] = tuple(shape)
            return True

        def set_tensor_address(self, name, address):
            if name not in self.engine.names or not address:
                return False
            self.addresses[name] = address
            return True

        def execute_async_v3(self, stream):
            shapes, addresses = dict(self.shapes), dict(self.addresses)
            missing = [n for n in self.engine.names if n not in addresses] + \
                      [n for n in self.engine.inputs if n not in shapes]
            if missing:
                return False
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
    return trt
