"""Deprecated: the TensorRT backend moved to omniad_edge.tensorrt (backend.py; CUDA loading in cuda.py).

Kept so that `from omniad_edge.backends.tensorrt import ...` keeps working for one release; it warns on import.
`create_backend(bundle, "tensorrt")` does not go through this module.
"""
from __future__ import annotations

import warnings

from ..tensorrt.backend import DeviceKVCache, StepPlan, TensorRTBackend, create_backend, expand_mask, plan_step
from ..tensorrt.cuda import CudaRuntime, load_cuda

warnings.warn("omniad_edge.backends.tensorrt is deprecated; import from omniad_edge.tensorrt instead",
              DeprecationWarning, stacklevel=2)

__all__ = ["TensorRTBackend", "DeviceKVCache", "create_backend", "plan_step", "StepPlan", "load_cuda", "CudaRuntime",
           "expand_mask"]
