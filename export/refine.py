"""Adds the mask refinement graph (training/refine.py makes it) to an exported bundle: graphs.refine + files.

    python -m export.refine BUNDLE_DIR refine.onnx [--size 224] [--dilate 1]

The graph is copied into the bundle, listed with its sha256, and the manifest is rewritten through a temporary file
and an atomic rename; the bundle is loaded (sha256 checked) before the call returns. A bundle without it runs
exactly as before (omniad_edge/refine.py).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from omniad_edge.contract import MANIFEST, REFINE_INPUT, REFINE_OUTPUT
from omniad_edge.errors import ExportError

from .manifest import sha256_file

REFINE_FILE = "refine.onnx"


def _check_graph(onnx_path: Path) -> int:
    import onnx

    model = onnx.load(str(onnx_path))
    names = ([i.name for i in model.graph.input], [o.name for o in model.graph.output])
    if names != ([REFINE_INPUT], [REFINE_OUTPUT]):
        raise ExportError(f"{onnx_path}: a refine graph takes [{REFINE_INPUT!r}] and returns [{REFINE_OUTPUT!r}], "
                          f"this one {names}")
    return max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx"))


def add_refine(bundle_dir, onnx_path, *, size: int = 224, dilate: int = 1) -> Path:
    """Copies onnx_path into bundle_dir as refine.onnx and records it in the manifest; -> the bundle directory."""
    from omniad_edge.bundle import load_bundle

    bundle_dir, onnx_path = Path(bundle_dir), Path(onnx_path)
    manifest_path = bundle_dir / MANIFEST
    if not manifest_path.is_file():
        raise ExportError(f"{bundle_dir} is not a bundle (no {MANIFEST})")
    if not onnx_path.is_file():
        raise ExportError(f"refine graph {onnx_path} does not exist")
    opset = _check_graph(onnx_path)
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    target = bundle_dir / REFINE_FILE
    if onnx_path.resolve() != target.resolve():
        shutil.copyfile(onnx_path, target)
    manifest["graphs"]["refine"] = {"path": REFINE_FILE, "size": int(size), "dilate": int(dilate),
                                    "precision": "fp32"}
    manifest["files"][REFINE_FILE] = {"sha256": sha256_file(target), "bytes": target.stat().st_size}
    manifest.setdefault("exporter", {}).setdefault("graphs", {})["refine"] = {
        "exporter": "dynamo", "opset": opset, "precision": "fp32", "source": "training/refine.py"}
    tmp = manifest_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, manifest_path)
    load_bundle(bundle_dir)  # the bundle still loads, sha256 included
    return bundle_dir


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Add a mask refinement graph to an exported bundle")
    ap.add_argument("bundle", type=Path)
    ap.add_argument("onnx", type=Path)
    ap.add_argument("--size", type=int, default=224, help="the graph's working size (longer side, pixels)")
    ap.add_argument("--dilate", type=int, default=1, help="grid cells the refined mask may reach beyond the coarse")
    args = ap.parse_args(argv)
    try:
        add_refine(args.bundle, args.onnx, size=args.size, dilate=args.dilate)
    except ExportError as exc:
        print(f"error: {exc}")
        return 2
    print(f"added {args.onnx} to {args.bundle}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
