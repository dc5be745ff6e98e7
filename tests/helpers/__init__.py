"""Shared test helpers: tiny checkpoints, a numpy + onnxruntime reference loop over bundles, the transformers
reference, and locating the real Qwen2.5 tokenizer. See tests/conftest.py for the fixtures built from them."""
