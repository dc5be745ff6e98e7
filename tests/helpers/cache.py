"""Build-once directories for expensive fixtures, keyed by a hash of the code that builds them.

A changed helper, exporter or library version gives a new key, so a stale cache is never reused; concurrent
builders write to private temporary directories and the first rename wins."""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    return Path(os.environ.get("OMNIAD_TEST_CACHE", Path(tempfile.gettempdir()) / "omniad_edge_test_cache"))


def source_key(*extra: str, bundle: bool = True) -> str:
    """Hash of the code a fixture is built from: tiny_models.py, plus the exporter when bundle=True."""
    import onnx
    import onnxruntime
    import torch
    import transformers

    digest = hashlib.sha256()
    # what the checkpoints and bundles are built from (not the test helpers that only read them)
    sources = [ROOT / "tests" / "helpers" / "tiny_models.py"]
    if bundle:
        sources += [ROOT / "omniad_edge" / "preprocess.py", ROOT / "omniad_edge" / "contract.py",
                    *sorted((ROOT / "export").glob("*.py"))]
    for path in sources:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    for part in (torch.__version__, transformers.__version__, onnx.__version__, onnxruntime.__version__, *extra):
        digest.update(part.encode())
    return digest.hexdigest()[:16]


def cached_dir(name: str, key: str, build) -> Path:
    """Path of cache_dir()/name-key, calling build(tmp_path) to create that (not yet existing) directory."""
    final = cache_dir() / f"{name}-{key}"
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build(tmp)
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _prune(final)
    return final


def _prune(current: Path, min_age_s: float = 3600) -> None:
    """Drop older builds of the same fixture (stale keys) once nobody can still be using them."""
    import time

    import re

    same = re.compile(re.escape(current.name.rsplit("-", 1)[0]) + "-[0-9a-f]{16}")
    for old in current.parent.iterdir():
        if old != current and same.fullmatch(old.name) and time.time() - old.stat().st_mtime > min_age_s:
            shutil.rmtree(old, ignore_errors=True)
