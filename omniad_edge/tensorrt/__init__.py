"""TensorRT for a bundle: plan and build engines on the device (`omniad-edge build-engine`), then run them behind
the backend interface (`create_backend(bundle, "tensorrt")`). docs/TENSORRT.md is the user guide.

One job per module, imported in this order (each only from the ones above it):

    cuda.py       the native pieces, loaded lazily: libcudart through ctypes, the tensorrt module; DeviceInfo
    limits.py     BuildOptions -> Limits, optimisation profiles, I/O buffer sizes (pure)
    precision.py  precision rules by GPU, TensorRT version and bundle precision (pure)
    memory.py     device-memory estimate and check (pure)
    record.py     the build record tensorrt/build.json: written by the build, checked by the backend (pure)
    build.py      the engine build (needs TensorRT and a GPU) and its dry-run plan
    backend.py    TensorRTBackend: engines, device buffers, device KV cache, CUDA-graph decode
    cli.py        `build-engine` argument parsing only

The pure modules run anywhere, so every rule is tested without a GPU; tensorrt is imported only by the build and
the backend, when they run.
"""
from __future__ import annotations

from .backend import DeviceKVCache, StepPlan, TensorRTBackend, create_backend, expand_mask, plan_step
from .build import build_engines, plan
from .cuda import CudaRuntime, DeviceInfo, import_tensorrt, load_cuda
from .limits import (BuildOptions, Limits, decoder_input_names, decoder_output_names, decoder_profiles,
                     io_buffer_plan, resolve_limits, vision_profile)
from .memory import MemoryEstimate, check_memory, estimate_memory
from .precision import check_bundle_precision, check_precision, check_quantization, strongly_typed
from .record import ENGINE_DIR, check_record, make_record, read_record, record_limits

__all__ = ["TensorRTBackend", "DeviceKVCache", "create_backend", "StepPlan", "plan_step", "expand_mask",
           "build_engines", "plan", "CudaRuntime", "DeviceInfo", "load_cuda", "import_tensorrt", "BuildOptions",
           "Limits", "resolve_limits", "vision_profile", "decoder_profiles", "decoder_input_names",
           "decoder_output_names", "io_buffer_plan", "MemoryEstimate",
           "estimate_memory", "check_memory", "check_precision", "check_bundle_precision", "check_quantization",
           "strongly_typed", "ENGINE_DIR", "make_record", "read_record", "check_record", "record_limits"]
