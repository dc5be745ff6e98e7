"""Which ONNX Runtime build is installed (onnxruntime, onnxruntime-gpu, ...), from injected package metadata: the
builds share the `onnxruntime` module, so the backend reports the package and warns when two are installed."""
from __future__ import annotations

import logging

import pytest

from omniad_edge.backends.onnxruntime import onnxruntime_build, onnxruntime_packages
from omniad_edge.errors import BackendError


class _Dist:
    """The parts of importlib.metadata.Distribution the detection reads."""

    def __init__(self, name, version, top_level=None, files=()):
        self.metadata = {"Name": name}
        self.version = version
        self._top, self.files = top_level, list(files)

    def read_text(self, filename):
        return self._top if filename == "top_level.txt" else None


class _Ort:
    __version__ = "1.20.1"

    def __init__(self, providers):
        self._providers = providers

    def get_available_providers(self):
        return self._providers


CPU = _Dist("onnxruntime", "1.32.0", "onnxruntime\n")
GPU = _Dist("onnxruntime_gpu", "1.20.1", "onnxruntime\n")  # JetPack's wheels spell it with an underscore
OTHERS = [_Dist("numpy", "2.1.0", "numpy\n"), _Dist("onnx", "1.17.0", "onnx\n"),
          _Dist("onnxruntime-genai", "0.5.0", "onnxruntime_genai\n"),  # a different module
          _Dist("onnxruntime-directml", "1.20.0", None, ["onnxruntime/__init__.py", "onnxruntime/capi/x.pyd"])]


def test_packages_are_found_by_the_module_they_install():
    assert onnxruntime_packages([*OTHERS[:3], CPU]) == [("onnxruntime", "1.32.0")]
    assert onnxruntime_packages([*OTHERS[:3], GPU]) == [("onnxruntime-gpu", "1.20.1")]
    assert onnxruntime_packages(OTHERS) == [("onnxruntime-directml", "1.20.0")]  # no top_level.txt: its files
    assert onnxruntime_packages(OTHERS[:3]) == []


def test_the_build_in_use_is_reported_with_its_providers():
    ort = _Ort(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    assert onnxruntime_build(ort, [GPU, *OTHERS[:3]]) == {
        "package": "onnxruntime-gpu", "version": "1.20.1", "providers": ort.get_available_providers()}


def test_two_builds_at_once_are_reported(caplog):
    """`pip install onnxruntime` after onnxruntime-gpu overwrites the GPU module: say so and how to repair it."""
    with caplog.at_level(logging.WARNING, logger="omniad_edge"):
        report = onnxruntime_build(_Ort(["CPUExecutionProvider"]), [CPU, GPU])
    assert report["package"] == "onnxruntime + onnxruntime-gpu"
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in caplog.text


def test_missing_provider_names_the_installed_package(tiny_bundle):
    from omniad_edge.backends.onnxruntime import OnnxRuntimeBackend
    from omniad_edge.bundle import load_bundle

    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(BackendError, match=r"not available in the installed onnxruntime .*onnxruntime-gpu"):
            OnnxRuntimeBackend(load_bundle(tiny_bundle), providers=["cuda"], threads=1)
    backend = OnnxRuntimeBackend(load_bundle(tiny_bundle), threads=1)
    report = backend.describe()["onnxruntime"]
    assert report["package"] in ("onnxruntime", "onnxruntime-gpu") and "CPUExecutionProvider" in report["providers"]
