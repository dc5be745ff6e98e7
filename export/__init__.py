"""Workstation side of omniad_edge: Hugging Face Qwen2.5-VL/Qwen2-VL checkpoint -> engine bundle (torch, onnx).

    python -m export CHECKPOINT_DIR OUT_DIR --precision int4
    from export import export_bundle; export_bundle("ckpt", "bundle", precision="fp16")

Imports stay lazy so `python -m export --help` answers without loading torch.
"""
__all__ = ["export_bundle", "ExportOptions", "main"]


def __getattr__(name):
    if name in ("export_bundle", "ExportOptions"):
        from . import pipeline

        return getattr(pipeline, name)
    if name == "main":
        from .cli import main

        return main
    raise AttributeError(f"module 'export' has no attribute {name!r}")
