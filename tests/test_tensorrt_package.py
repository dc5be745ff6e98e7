"""The package's public face: the names re-exported by omniad_edge.tensorrt, and the deprecated old import paths."""
from __future__ import annotations

import importlib
import sys

import pytest

import omniad_edge.tensorrt as trt_pkg
from omniad_edge.tensorrt import backend, build, cli, cuda, limits, record


@pytest.mark.parametrize("old, moved", [
    ("omniad_edge.engine_build", {"BuildOptions": limits, "resolve_limits": limits, "build_engines": build,
                                  "read_record": record, "DeviceInfo": cuda, "main": cli, "add_parser": cli}),
    ("omniad_edge.backends.tensorrt", {"TensorRTBackend": backend, "plan_step": backend, "load_cuda": cuda,
                                       "CudaRuntime": cuda, "create_backend": backend}),
])
def test_old_import_paths_warn_and_give_the_same_objects(old, moved):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match="omniad_edge.tensorrt"):
        module = importlib.import_module(old)
    for name, home in moved.items():
        assert getattr(module, name) is getattr(home, name), name


def test_package_exports_exist():
    for name in trt_pkg.__all__:
        assert hasattr(trt_pkg, name), name

