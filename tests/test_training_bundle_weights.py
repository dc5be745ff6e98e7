"""training/bundle_weights.py: the shipped bundle read back into a PyTorch model writes what the bundle writes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from omniad_edge.errors import BundleError  # noqa: E402

BUNDLE = Path(__file__).resolve().parents[1] / "omniad_edge" / "models" / "default"


def test_the_shipped_bundle_becomes_a_torch_model_with_the_same_output(tmp_path):
    from training import spec as S
    from training.bundle_weights import model_from_bundle
    from training.evaluate import EdgeRunner, TorchRunner, evaluate
    from training.train import save_hf

    model, tokenizer = model_from_bundle(BUNDLE)
    assert sum(p.numel() for p in model.parameters()) == 4_882_048
    save_hf(model, tmp_path / "hf", BUNDLE / "tokenizer.json", S.load_spec())
    result = evaluate([EdgeRunner(BUNDLE, threads=2), TorchRunner(tmp_path / "hf", threads=2)], n=4, progress=False)
    agreement = result["summary"]["agreement"]
    # fp16 weights back in float32: the same greedy text, scores within the fp16 bundle's own tolerance
    assert agreement["same_text"] == 1.0 and agreement["max_score_diff"] < 5e-3, agreement


def test_a_quantized_bundle_is_refused(tmp_path):
    from training.bundle_weights import model_from_bundle

    copy = tmp_path / "int8"
    shutil.copytree(BUNDLE, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["precision"] = "int8"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="cannot be fine-tuned"):
        model_from_bundle(copy)
