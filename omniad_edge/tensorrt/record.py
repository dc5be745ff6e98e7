"""The build record (`tensorrt/build.json`): written last by the build, read and checked by the backend. Engines run
only on the device model and TensorRT version they were built with, for the same bundle. Pure Python.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

from .._version import __version__
from ..errors import BackendError
from .cuda import DeviceInfo
from .limits import BuildOptions, Limits

__all__ = ["make_record", "read_record", "check_record", "record_limits", "manifest_sha256", "ENGINE_DIR", "RECORD",
           "ENGINE_FILES"]

ENGINE_DIR = "tensorrt"
RECORD = "build.json"
RECORD_FORMAT = "omniad-edge-tensorrt"
RECORD_VERSION = 1
ENGINE_FILES = {"vision": "vision.engine", "decoder": "decoder.engine"}


def manifest_sha256(root: Path) -> str:
    return hashlib.sha256((Path(root) / "manifest.json").read_bytes()).hexdigest()


def make_record(*, trt_version: str, device: DeviceInfo, opts: BuildOptions, limits: Limits, manifest_sha: str,
                bundle_name: str, profiles: dict, engines: dict, precision: dict, build_seconds: float) -> dict:
    return {
        "format": RECORD_FORMAT,
        "format_version": RECORD_VERSION,
        "omniad_edge": __version__,
        "tensorrt": trt_version,
        "device": {"name": device.name, "compute_capability": list(device.compute_capability),
                   "integrated": device.integrated, "total_memory": device.total_memory},
        "flags": {"fp16": opts.fp16, "int8": opts.int8, "fp8": opts.fp8, "tf32": opts.tf32,
                  "workspace_gb": opts.workspace_gb, **precision},
        "limits": asdict(limits),
        "profiles": profiles,
        "bundle": {"name": bundle_name, "manifest_sha256": manifest_sha},
        "engines": engines,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(build_seconds, 1),
    }


def record_limits(record: dict) -> Limits:
    return Limits(**{k: int(v) for k, v in record["limits"].items()})


def read_record(root: Path) -> dict:
    path = Path(root) / ENGINE_DIR / RECORD
    if not path.is_file():
        raise BackendError(
            f"bundle {root} has no TensorRT engines ({ENGINE_DIR}/{RECORD} is missing); build them on this device "
            f"with: omniad-edge build-engine {root}"
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BackendError(f"{path} is not valid JSON ({exc}); rebuild with: omniad-edge build-engine {root}") from None
    return record


def check_record(record: dict, *, trt_version: str, device: DeviceInfo, manifest_sha: str,
                 root: Path | str = "BUNDLE") -> None:
    """Engines run only on the device model and TensorRT version they were built with, for the same bundle."""
    rebuild = f"rebuild them on this device with: omniad-edge build-engine {root}"
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise BackendError(f"{root}/{ENGINE_DIR}/{RECORD} is not a TensorRT build record; {rebuild}")
    if record.get("format_version") != RECORD_VERSION:
        raise BackendError(f"build record format_version {record.get('format_version')!r} is not supported; {rebuild}")
    built = record.get("tensorrt")
    if built != trt_version:
        raise BackendError(f"the engines were built with TensorRT {built}, this runtime has TensorRT {trt_version}; "
                           f"{rebuild}")
    dev = record.get("device", {})
    cc = tuple(dev.get("compute_capability", ()))
    if cc != tuple(device.compute_capability) or dev.get("name") != device.name:
        have = f"{device.name} (compute capability {device.compute_capability[0]}.{device.compute_capability[1]})"
        want = f"{dev.get('name')} (compute capability {'.'.join(str(x) for x in cc)})"
        raise BackendError(f"the engines were built for {want}, this device is {have}; {rebuild}")
    if record.get("bundle", {}).get("manifest_sha256") != manifest_sha:
        raise BackendError(f"the engines were built from another version of this bundle (manifest changed); {rebuild}")
    for name in ENGINE_FILES:
        if name not in record.get("engines", {}):
            raise BackendError(f"the build record lists no {name} engine; {rebuild}")
