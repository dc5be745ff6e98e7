"""omniad_edge: OmniAD-style industrial anomaly inspection on edge devices.

    from omniad_edge import Inspector
    inspection = Inspector().run("part.png")

Heavy parts (onnxruntime, the inspector) load on first use, so `import omniad_edge` stays cheap.
"""
import logging

from ._version import __version__
from .errors import (BackendError, BundleError, ExportError, FrameError, InspectorClosedError, OmniADError,
                     PositionError)

_LAZY = {
    "Inspector": ("inspector", "Inspector"),
    "Inspection": ("inspection", "Inspection"),
    "load_bundle": ("bundle", "load_bundle"),
    "overlay": ("visualize", "overlay"),
}
# Public modules reachable as attributes (omniad_edge.visualize.overlay) without importing them first.
_MODULES = ("visualize", "synth", "contract")

__all__ = ["__version__", "OmniADError", "BundleError", "FrameError", "BackendError", "ExportError",
           "InspectorClosedError", "PositionError", *_LAZY, *_MODULES]

# The library reports through the "omniad_edge" logger only; the application decides where it goes.
logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name):
    import importlib

    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
    elif name in _MODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'omniad_edge' has no attribute {name!r}")
    globals()[name] = value
    return value
