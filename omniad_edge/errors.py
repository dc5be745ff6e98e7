"""Typed errors. Every error the SDK raises on purpose subclasses OmniADError, and also the builtin type a caller
would expect (ValueError, FileNotFoundError, ...) so plain `except ValueError` keeps working."""


class OmniADError(Exception):
    """Base of all omniad_edge errors."""


class BundleError(OmniADError, ValueError):
    """The engine bundle is missing a file, fails its sha256, escapes its directory or has an unknown format."""


class FrameError(OmniADError, ValueError):
    """A frame cannot be inspected: wrong type, dtype, shape, channel count, size, NaN, unreadable file."""


class BackendError(OmniADError, RuntimeError):
    """An inference backend is unavailable or failed (missing provider, engine built for another device)."""


class ExportError(OmniADError, ValueError):
    """A checkpoint cannot be exported: not Qwen2.5-VL, missing/corrupt files, unsupported settings."""


class PositionError(OmniADError, ValueError):
    """A request past the positions the bundle's decoder covers (its rotary tables: manifest
    graphs.decoder.rotary_positions, or model.max_position): a prompt plus token budget too long for it."""


class InspectorClosedError(OmniADError, RuntimeError):
    """The Inspector was closed (close() or the end of its `with` block); create a new one."""


class DataError(OmniADError, ValueError):
    """A training data set cannot be used: no images, unreadable or mixed-size images, masks that do not match their
    images, defects without good images (raised by training/, `omniad-edge adapt`)."""


class AdaptError(OmniADError, RuntimeError):
    """Fine-tuning on a user's part cannot go on or would ship a worse model: a budget too small to learn anything,
    a resume state from other inputs, an output that already exists."""
