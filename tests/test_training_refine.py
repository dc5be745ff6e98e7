"""training/refine.py: the grid perturbation, the examples, and the whole path (train a few steps, export to ONNX
checked against torch, add to a bundle the Inspector then runs)."""
import json
import shutil

import numpy as np
import pytest

pytest.importorskip("torch", reason="training/refine.py needs the training extra (torch)")

from omniad_edge import Inspector, load_bundle  # noqa: E402
from omniad_edge.bundle import DEFAULT_BUNDLE_DIR  # noqa: E402
from training import refine as T  # noqa: E402


def test_perturb_keeps_a_non_empty_grid_of_the_same_label_without_wrapping():
    rng = np.random.default_rng(0)
    grid = np.zeros((16, 16), np.uint8)
    grid[0, 3:6] = 4  # on the top edge: a shift up must not reappear at the bottom
    changed = 0
    for _ in range(200):
        g = T.perturb(grid, rng)
        assert g.dtype == np.uint8 and g.any() and set(np.unique(g)) <= {0, 4}
        assert not g[-1].any() and not g[:, -1].any()
        assert T.R.dilate_grid(grid, 2)[g != 0].all()  # a shift and a grown cell at most
        changed += not np.array_equal(g, grid)
    assert 100 < changed < 200


def test_batch_crops_hold_the_defect_and_the_gate():
    spec = T.S.load_spec()
    data = T.examples(4, 0, spec, seed=0)
    assert all(mask.any() and grid.any() for _, mask, grid in data)
    x, y, gate = T.batch(data, np.random.default_rng(0), crop=64)
    assert x.shape == (4, 4, 64, 64) and y.shape == gate.shape == (4, 1, 64, 64)
    assert set(np.unique(y)) <= {0.0, 1.0} and set(np.unique(gate)) <= {0.0, 1.0}
    assert (y.sum((1, 2, 3)) > 0).sum() >= 3 and (gate.sum((1, 2, 3)) > 0).all()


def test_train_export_and_add_to_a_bundle(tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE_DIR, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["graphs"].pop("refine", None)
    manifest["files"].pop("refine.onnx", None)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    (bundle / "refine.onnx").unlink(missing_ok=True)
    out = tmp_path / "run"
    assert T.main(["--out", str(out), "--max-steps", "2", "--frames", "4", "--batch", "2", "--val", "2",
                   "--bundle", str(bundle)]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e.get("event") for e in log if "event" in e] == ["data", "trained", "val", "exported", "bundled"]
    loaded = load_bundle(bundle)
    assert loaded.refine == {"path": "refine.onnx", "size": T.SIZE, "dilate": T.DILATE, "precision": "fp32"}
    assert (bundle / "refine.onnx").read_bytes() == (out / "refine.onnx").read_bytes()
    result = Inspector(bundle, threads=1).run(np.full((224, 224, 3), 100, np.uint8))
    assert "refine" in result.timings


def test_model_from_onnx_reads_the_bundled_graph_back(tmp_path):
    import onnxruntime as ort
    import torch

    from omniad_edge.errors import BundleError

    graph = DEFAULT_BUNDLE_DIR / "refine.onnx"
    model = T.model_from_onnx(graph)
    x = np.random.default_rng(0).standard_normal((1, 4, 64, 96)).astype(np.float32)
    want = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"]).run(None, {T.REFINE_INPUT: x})[0]
    with torch.no_grad():
        assert np.allclose(model(torch.from_numpy(x)).numpy(), want, atol=1e-4)
    with pytest.raises(BundleError, match="not a refine graph"):
        T.model_from_onnx(DEFAULT_BUNDLE_DIR / "vision.onnx")
