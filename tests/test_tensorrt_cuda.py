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


# -- the real CUDA runtime, where a GPU is at hand (TensorRT not needed) --------------------------------------------

def _real_cuda():
    from omniad_edge.tensorrt.cuda import load_cuda

    try:
        cuda = load_cuda()
        cuda.device_info(0)
    except BackendError as exc:
        pytest.skip(f"no CUDA device here ({exc}); this checks the ctypes layer on a real GPU")
    return cuda


def _check_buffers_copies_and_graph_replay(cuda):
    """Allocations aligned as TensorRT needs, async and strided copies, and a captured graph replayed on a stream."""
    import ctypes

    import numpy as np

    from omniad_edge.tensorrt.cuda import D2D, D2H, H2D
    from omniad_edge.tensorrt.limits import ALIGNMENT

    n = 1000  # not a multiple of 256: the next allocation must still start aligned
    stream = cuda.stream_create()
    dev = [cuda.malloc(n * 4) for _ in range(3)]
    host = [cuda.host_alloc(n * 4) for _ in range(2)]
    try:
        assert all(p % ALIGNMENT == 0 for p in dev)
        src = np.frombuffer((ctypes.c_char * (n * 4)).from_address(host[0]), np.float32)
        out = np.frombuffer((ctypes.c_char * (n * 4)).from_address(host[1]), np.float32)
        src[:] = np.arange(n, dtype=np.float32)
        cuda.memcpy_async(dev[0], host[0], n * 4, H2D, stream)
        cuda.memset_async(dev[1], 0, n * 4, stream)
        # rows of 40 bytes at a 100-byte pitch: the strided copy the backend uses for batches
        cuda.memcpy2d_async(dev[1], 100, dev[0], 100, 40, 10, D2D, stream)
        cuda.memcpy_async(host[1], dev[1], n * 4, D2H, stream)
        cuda.stream_synchronize(stream)
        rows = src[: 10 * 25].reshape(10, 25)[:, :10]
        np.testing.assert_array_equal(out[: 10 * 25].reshape(10, 25)[:, :10], rows)
        assert not out[: 10 * 25].reshape(10, 25)[:, 10:].any()

        cuda.begin_capture(stream)  # capture dev[0] -> dev[2], then replay it after dev[0] changed
        cuda.memcpy_async(dev[2], dev[0], n * 4, D2D, stream)
        graph = cuda.end_capture(stream)
        src[:] = -src
        cuda.memcpy_async(dev[0], host[0], n * 4, H2D, stream)
        for _ in range(3):
            cuda.graph_launch(graph, stream)
        cuda.memcpy_async(host[1], dev[2], n * 4, D2H, stream)
        cuda.stream_synchronize(stream)
        np.testing.assert_array_equal(out, src)
        cuda.graph_destroy(graph)
    finally:
        for p in dev:
            cuda.free(p)
        for p in host:
            cuda.free_host(p)
        cuda.stream_destroy(stream)


def test_real_cuda_buffers_copies_and_graph_replay():
    _check_buffers_copies_and_graph_replay(_real_cuda())


def test_the_same_checks_pass_on_the_fake_device():
    """The GPU check above, run against fake_tensorrt.FakeCuda: the checks themselves hold on every machine."""
    from helpers.tensorrt_cases import load_sibling

    _check_buffers_copies_and_graph_replay(load_sibling("fake_tensorrt").FakeCuda())
