"""omniad_edge: OmniAD-style industrial anomaly inspection on edge devices.

    from omniad_edge import Inspector
    inspection = Inspector().run("part.png")

Heavy parts (onnxruntime, the inspector) load on first use, so `import omniad_edge` stays cheap.
"""
from ._version import __version__
import logging

from .errors import BackendError, BundleError, ExportError, FrameError, InspectorClosedError, OmniADError

_LAZY = {
    "Inspector": ("inspector", "Inspector"),
    "Inspection": ("inspection", "Inspection"),
    "load_bundle": ("bundle", "load_bundle"),
}

__all__ = ["__version__", "OmniADError", "BundleError", "FrameError", "BackendError", "ExportError",
           "InspectorClosedError", *_LAZY]

# The library reports through the "omniad_edge" logger only; the application decides where it goes.
logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'omniad_edge' has no attribute {name!r}")
