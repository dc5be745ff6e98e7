"""The native pieces, loaded lazily: the CUDA runtime (libcudart through ctypes; no torch, no cuda-python) and the
tensorrt module. Nothing here plans or builds; `DeviceInfo` is what the rest of the package knows about a GPU.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
from contextlib import contextmanager
from dataclasses import dataclass

from ..errors import BackendError

__all__ = ["DeviceInfo", "CudaRuntime", "load_cuda", "import_tensorrt", "tensorrt_step", "H2D", "D2H", "D2D"]


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    compute_capability: tuple[int, int]
    total_memory: int
    free_memory: int
    integrated: bool = False  # Jetson: GPU and CPU share one memory
    index: int = 0


H2D, D2H, D2D = 1, 2, 3  # cudaMemcpyKind
_ATTR_CC_MAJOR, _ATTR_CC_MINOR, _ATTR_INTEGRATED = 75, 76, 18  # cudaDeviceAttr
_CAPTURE_THREAD_LOCAL = 1  # cudaStreamCaptureModeThreadLocal


def _cudart_candidates() -> list[str]:
    names = []
    found = ctypes.util.find_library("cudart")
    if found:
        names.append(found)
    names += ["libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0"]
    # CUDA installs without ldconfig entries: JetPack/toolkit default path, pip's nvidia-cuda-runtime wheel.
    names += sorted(glob.glob("/usr/local/cuda/lib64/libcudart.so*"), reverse=True)
    try:
        import nvidia.cuda_runtime  # the pip wheel's namespace package; only its path is used
        for base in nvidia.cuda_runtime.__path__:
            names += sorted(glob.glob(os.path.join(base, "lib", "libcudart.so*")), reverse=True)
    except ImportError:
        pass
    return names


class CudaRuntime:
    """The few CUDA runtime calls the backend needs, each checked; errors become BackendError."""

    def __init__(self, lib: ctypes.CDLL):
        self._lib = lib
        lib.cudaGetErrorString.restype = ctypes.c_char_p
        lib.cudaGetErrorString.argtypes = [ctypes.c_int]
        sizes = ctypes.c_size_t
        ptr = ctypes.c_void_p
        signatures = {
            "cudaSetDevice": [ctypes.c_int],
            "cudaDeviceGetAttribute": [ctypes.POINTER(ctypes.c_int), ctypes.c_int, ctypes.c_int],
            "cudaGetDeviceProperties": [ctypes.c_char_p, ctypes.c_int],
            "cudaMemGetInfo": [ctypes.POINTER(sizes), ctypes.POINTER(sizes)],
            "cudaMalloc": [ctypes.POINTER(ptr), sizes],
            "cudaFree": [ptr],
            "cudaHostAlloc": [ctypes.POINTER(ptr), sizes, ctypes.c_uint],
            "cudaFreeHost": [ptr],
            "cudaMemsetAsync": [ptr, ctypes.c_int, sizes, ptr],
            "cudaMemcpyAsync": [ptr, ptr, sizes, ctypes.c_int, ptr],
            "cudaMemcpy2DAsync": [ptr, sizes, ptr, sizes, sizes, sizes, ctypes.c_int, ptr],
            "cudaStreamCreate": [ctypes.POINTER(ptr)],
            "cudaStreamDestroy": [ptr],
            "cudaStreamSynchronize": [ptr],
            "cudaStreamBeginCapture": [ptr, ctypes.c_int],
            "cudaStreamEndCapture": [ptr, ctypes.POINTER(ptr)],
            "cudaGraphInstantiateWithFlags": [ctypes.POINTER(ptr), ptr, ctypes.c_ulonglong],
            "cudaGraphLaunch": [ptr, ptr],
            "cudaGraphDestroy": [ptr],
            "cudaGraphExecDestroy": [ptr],
        }
        for name, argtypes in signatures.items():
            fn = getattr(lib, name)
            fn.argtypes = argtypes
            fn.restype = ctypes.c_int

    def _check(self, code: int, what: str) -> None:
        if code != 0:
            message = self._lib.cudaGetErrorString(code).decode(errors="replace")
            raise BackendError(f"CUDA {what} failed: {message} (error {code})")

    def _call(self, name: str, *args) -> None:
        self._check(getattr(self._lib, name)(*args), name)

    def set_device(self, index: int) -> None:
        self._call("cudaSetDevice", index)

    def device_info(self, index: int = 0) -> DeviceInfo:
        self.set_device(index)
        values = {}
        for key, attr in (("major", _ATTR_CC_MAJOR), ("minor", _ATTR_CC_MINOR), ("integrated", _ATTR_INTEGRATED)):
            out = ctypes.c_int()
            self._call("cudaDeviceGetAttribute", ctypes.byref(out), attr, index)
            values[key] = out.value
        # cudaDeviceProp starts with char name[256] in every CUDA version; the buffer is larger than the struct.
        props = ctypes.create_string_buffer(8192)
        self._call("cudaGetDeviceProperties", props, index)
        name = props.raw[:256].split(b"\0", 1)[0].decode(errors="replace")
        free, total = self.mem_get_info()
        return DeviceInfo(name=name, compute_capability=(values["major"], values["minor"]), total_memory=total,
                          free_memory=free, integrated=bool(values["integrated"]), index=index)

    def mem_get_info(self) -> tuple[int, int]:
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        self._call("cudaMemGetInfo", ctypes.byref(free), ctypes.byref(total))
        return free.value, total.value

    def malloc(self, nbytes: int) -> int:
        out = ctypes.c_void_p()
        self._call("cudaMalloc", ctypes.byref(out), max(int(nbytes), 1))
        return int(out.value)

    def free(self, ptr: int) -> None:
        self._call("cudaFree", ctypes.c_void_p(ptr))

    def host_alloc(self, nbytes: int) -> int:
        out = ctypes.c_void_p()
        self._call("cudaHostAlloc", ctypes.byref(out), max(int(nbytes), 1), 0)
        return int(out.value)

    def free_host(self, ptr: int) -> None:
        self._call("cudaFreeHost", ctypes.c_void_p(ptr))

    def memset_async(self, ptr: int, value: int, nbytes: int, stream: int) -> None:
        self._call("cudaMemsetAsync", ctypes.c_void_p(ptr), value, nbytes, ctypes.c_void_p(stream))

    def memcpy_async(self, dst: int, src: int, nbytes: int, kind: int, stream: int) -> None:
        if nbytes:
            self._call("cudaMemcpyAsync", ctypes.c_void_p(dst), ctypes.c_void_p(src), nbytes, kind,
                       ctypes.c_void_p(stream))

    def memcpy2d_async(self, dst: int, dpitch: int, src: int, spitch: int, width: int, height: int, kind: int,
                       stream: int) -> None:
        if width and height:
            self._call("cudaMemcpy2DAsync", ctypes.c_void_p(dst), dpitch, ctypes.c_void_p(src), spitch, width,
                       height, kind, ctypes.c_void_p(stream))

    def stream_create(self) -> int:
        out = ctypes.c_void_p()
        self._call("cudaStreamCreate", ctypes.byref(out))
        return int(out.value or 0)

    def stream_destroy(self, stream: int) -> None:
        self._call("cudaStreamDestroy", ctypes.c_void_p(stream))

    def stream_synchronize(self, stream: int) -> None:
        self._call("cudaStreamSynchronize", ctypes.c_void_p(stream))

    def begin_capture(self, stream: int) -> None:
        self._call("cudaStreamBeginCapture", ctypes.c_void_p(stream), _CAPTURE_THREAD_LOCAL)

    def end_capture(self, stream: int) -> int:
        graph = ctypes.c_void_p()
        self._call("cudaStreamEndCapture", ctypes.c_void_p(stream), ctypes.byref(graph))
        exe = ctypes.c_void_p()
        try:
            self._call("cudaGraphInstantiateWithFlags", ctypes.byref(exe), graph, 0)
        finally:
            self._call("cudaGraphDestroy", graph)
        return int(exe.value)

    def graph_launch(self, graph_exec: int, stream: int) -> None:
        self._call("cudaGraphLaunch", ctypes.c_void_p(graph_exec), ctypes.c_void_p(stream))

    def graph_destroy(self, graph_exec: int) -> None:
        self._call("cudaGraphExecDestroy", ctypes.c_void_p(graph_exec))


_CUDA: CudaRuntime | None = None


def load_cuda() -> CudaRuntime:
    """The process-wide CUDA runtime wrapper; BackendError when libcudart cannot be found."""
    global _CUDA
    if _CUDA is None:
        errors = []
        for name in _cudart_candidates():
            try:
                _CUDA = CudaRuntime(ctypes.CDLL(name))
                break
            except (OSError, AttributeError) as exc:
                errors.append(f"{name}: {exc}")
        else:
            raise BackendError("the CUDA runtime (libcudart) was not found; install the CUDA toolkit/JetPack or the "
                               f"nvidia-cuda-runtime wheel ({'; '.join(errors[:3])})")
    return _CUDA


def import_tensorrt():
    """The tensorrt module; BackendError saying how to install it when it is missing."""
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendError(
            "TensorRT's Python package is not installed (import tensorrt failed: "
            f"{exc}). On Jetson it comes with JetPack (apt install python3-libnvinfer); on x86-64 Linux: "
            "pip install tensorrt (see docs/TENSORRT.md)"
        ) from None
    return tensorrt


@contextmanager
def tensorrt_step(engine: str | None, step: str):
    """TensorRT's Python bindings raise RuntimeError where the C++ API returns false or null; inside this block it
    becomes a BackendError naming the engine (None: no engine yet) and the step."""
    try:
        yield
    except BackendError:
        raise
    except RuntimeError as exc:
        where = f"the {engine} engine: " if engine else ""
        raise BackendError(f"{where}TensorRT failed to {step}: {exc}") from None
