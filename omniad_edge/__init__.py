"""omniad_edge: OmniAD-style industrial anomaly inspection on edge devices.

    from omniad_edge import Inspector
    inspection = Inspector().run("part.png")

Heavy parts (onnxruntime, the inspector) load on first use, so `import omniad_edge` stays cheap.
"""
from ._version import __version__
from .errors import BackendError, BundleError, ExportError, FrameError, OmniADError

_LAZY = {
    "Inspector": ("inspector", "Inspector"),
    "Inspection": ("inspection", "Inspection"),
    "load_bundle": ("bundle", "load_bundle"),
}

__all__ = ["__version__", "OmniADError", "BundleError", "FrameError", "BackendError", "ExportError", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'omniad_edge' has no attribute {name!r}")
