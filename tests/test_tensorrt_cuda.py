"""The ctypes CUDA wrapper against a stub libcudart (every machine)."""
from __future__ import annotations

import pytest

from omniad_edge.errors import BackendError


# -- the ctypes CUDA wrapper against a stub libcudart ------------------------------------------------------------

class _StubCudart:
    """Python stand-ins for the libcudart entry points (ctypes byref arguments expose `_obj`)."""

    def __init__(self, fail=None):
        self.fail = fail
        for name in ("cudaSetDevice", "cudaFree", "cudaHostAlloc", "cudaFreeHost", "cudaMemsetAsync", "cudaMemcpyAsync",
                     "cudaMemcpy2DAsync", "cudaStreamCreate", "cudaStreamDestroy", "cudaStreamSynchronize",
                     "cudaStreamBeginCapture", "cudaStreamEndCapture", "cudaGraphInstantiateWithFlags",
                     "cudaGraphLaunch", "cudaGraphDestroy", "cudaGraphExecDestroy"):
            setattr(self, name, self._ok(name))
        for name in ("cudaGetErrorString", "cudaDeviceGetAttribute", "cudaGetDeviceProperties", "cudaMemGetInfo",
                     "cudaMalloc"):
            method = getattr(self, name)
            setattr(self, name, lambda *args, _m=method: _m(*args))  # plain functions accept ctypes attributes

    def _ok(self, name):
        def call(*args):
            return 2 if name == self.fail else 0
        return call

    @staticmethod
    def cudaGetErrorString(code):
        return {2: b"out of memory"}.get(code, b"unknown")

    def cudaDeviceGetAttribute(self, out, attr, device):
        out._obj.value = {75: 8, 76: 7, 18: 1}[attr]
        return 0

    def cudaGetDeviceProperties(self, props, device):
        import ctypes

        ctypes.memmove(props, b"Orin (nvgpu)\0garbage", 21)
        return 0

    def cudaMemGetInfo(self, free, total):
        free._obj.value, total._obj.value = 5 << 30, 8 << 30
        return 0

    def cudaMalloc(self, out, size):
        if self.fail == "cudaMalloc":
            return 2
        out._obj.value = 0x1000
        return 0


def test_cuda_wrapper_reads_the_device_and_raises_typed_errors():
    from omniad_edge.tensorrt.cuda import CudaRuntime

    info = CudaRuntime(_StubCudart()).device_info(0)
    assert (info.name, info.compute_capability, info.integrated) == ("Orin (nvgpu)", (8, 7), True)
    assert (info.free_memory, info.total_memory) == (5 << 30, 8 << 30)
    assert CudaRuntime(_StubCudart()).malloc(16) == 0x1000
    with pytest.raises(BackendError, match="cudaMalloc failed: out of memory"):
        CudaRuntime(_StubCudart(fail="cudaMalloc")).malloc(16)
    with pytest.raises(BackendError, match="cudaStreamSynchronize"):
        CudaRuntime(_StubCudart(fail="cudaStreamSynchronize")).stream_synchronize(0)
