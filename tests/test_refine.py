"""Mask refinement stage (omniad_edge/refine.py): window and dilation rules, the refined-mask rule on hand-made
graphs, bad graphs, and the Inspector with and without a refine graph."""
import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from omniad_edge import Inspector, load_bundle, tam
from omniad_edge.bundle import DEFAULT_BUNDLE_DIR
from omniad_edge.errors import BackendError, BundleError
from omniad_edge.inspector import InspectorError
from omniad_edge.refine import Refiner, dilate_grid, refine_input, window, work_size


def conv_graph(path, weight=(10.0, 0.0, 0.0, 0.0), output="logits"):
    """logits = sum_c weight[c] * input[c]: with weight (10, 0, 0, 0), +5 where the red channel is 255, -5 at 0."""
    w = np.asarray(weight, np.float32).reshape(1, 4, 1, 1)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "W"], [output])], "toy_refine",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 4, "h", "w"])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, [1, 1, "h", "w"])],
        [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def bundle_copy(tmp_path, refine_graph=None, **graph_options):
    """The embedded bundle copied, its refine graph removed, or replaced by `refine_graph`."""
    from export.refine import add_refine

    root = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE_DIR, root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["graphs"].pop("refine", None)
    manifest["files"].pop("refine.onnx", None)
    (root / "refine.onnx").unlink(missing_ok=True)
    (root / "manifest.json").write_text(json.dumps(manifest))
    if refine_graph is not None:
        add_refine(root, refine_graph, **graph_options)
    return root


def red_frame():
    """224x224 grey frame with two red squares: one inside cell (5, 5), one far away in cell (12, 12)."""
    rgb = np.full((224, 224, 3), 90, np.uint8)
    rgb[:, :, 0] = 0
    rgb[72:78, 73:79, 0] = 255  # 6x6 px inside cell (5, 5) = pixels [70, 84)
    rgb[170:176, 170:176, 0] = 255  # cell (12, 12)
    return rgb


def test_work_size_keeps_aspect_in_multiples_of_four():
    assert work_size(224, 224, 224) == (224, 224)
    assert work_size(1080, 1920, 224) == (128, 224)  # 1080 * 224 / 1920 = 126 -> 128
    assert work_size(3, 500, 224) == (4, 224)


def test_dilate_grid_grows_by_cells_in_eight_directions():
    grid = np.zeros((6, 6), np.uint8)
    grid[2, 3] = 4
    one = dilate_grid(grid, 1)
    assert one.sum() == 9 and one[1:4, 2:5].all()
    assert dilate_grid(grid, 2).sum() == 25
    assert dilate_grid(grid, 0).sum() == 1


def test_window_is_the_gate_box_plus_margin_on_multiples_of_four():
    gate = np.zeros((224, 224), bool)
    gate[70:98, 42:56] = True
    ys, xs = window(gate, margin=24)
    assert (ys.start, ys.stop, xs.start, xs.stop) == (44, 124, 16, 80)
    gate[:] = False
    gate[0:5, 220:224] = True  # clipped at the frame
    ys, xs = window(gate, margin=24)
    assert (ys.start, ys.stop, xs.start, xs.stop) == (0, 32, 196, 224)


def test_refine_input_is_the_normalised_frame_and_the_coarse_mask():
    rgb = red_frame()
    grid = np.zeros((16, 16), np.uint8)
    grid[5, 5] = 1
    x = refine_input(rgb, grid, 224)
    assert x.shape == (1, 4, 224, 224) and x.dtype == np.float32
    assert x[0, 0, 75, 75] == pytest.approx(0.5) and x[0, 0, 0, 0] == pytest.approx(-0.5)
    assert x[0, 1, 0, 0] == pytest.approx(90 / 255 - 0.5)
    np.testing.assert_array_equal(x[0, 3] > 0, tam.grid_to_mask(grid, (224, 224)))


def test_refined_mask_is_what_the_graph_marks_inside_the_dilated_coarse_mask(tmp_path):
    bundle = load_bundle(bundle_copy(tmp_path, conv_graph(tmp_path / "r.onnx"), size=224, dilate=1))
    refiner = Refiner(bundle, threads=1)
    rgb = red_frame()
    grid = np.zeros((16, 16), np.uint8)
    grid[4, 4] = 1  # one cell off the square: the one-cell margin still reaches it
    coarse = tam.grid_to_mask(grid, (224, 224))
    mask, refined = refiner.refine(rgb, grid, coarse)
    assert refined
    expected = np.zeros((224, 224), bool)
    expected[72:78, 73:79] = True  # the far square (cell 12, 12) is outside the gate: never marked
    np.testing.assert_array_equal(mask, expected)
    # an empty grid skips the graph and keeps the (empty) coarse mask
    empty = np.zeros((16, 16), np.uint8)
    out, refined = refiner.refine(rgb, empty, tam.grid_to_mask(empty, (224, 224)))
    assert not refined and not out.any()


def test_nothing_marked_or_non_finite_logits_keep_the_coarse_mask(tmp_path):
    rgb = red_frame()
    grid = np.zeros((16, 16), np.uint8)
    grid[1, 1] = 1  # nothing red within one cell of it
    coarse = tam.grid_to_mask(grid, (224, 224))
    refiner = Refiner(load_bundle(bundle_copy(tmp_path, conv_graph(tmp_path / "r.onnx"), size=224, dilate=1)))
    mask, refined = refiner.refine(rgb, grid, coarse)
    assert not refined and mask is coarse
    nan = conv_graph(tmp_path / "nan.onnx", weight=(np.nan, 0, 0, 0))
    refiner = Refiner(load_bundle(bundle_copy(tmp_path / "n", nan, size=224, dilate=1)))
    grid[5, 5] = 1
    mask, refined = refiner.refine(rgb, grid, coarse)
    assert not refined and mask is coarse


def test_a_non_square_frame_is_refined_in_its_own_coordinates(tmp_path):
    refiner = Refiner(load_bundle(bundle_copy(tmp_path, conv_graph(tmp_path / "r.onnx"), size=112, dilate=1)))
    rgb = np.zeros((200, 400, 3), np.uint8)
    rgb[100:120, 200:240, 0] = 255
    grid = np.zeros((16, 16), np.uint8)
    grid[8, 8] = 1  # cell rows [100, 113), columns [200, 225)
    mask, refined = refiner.refine(rgb, grid, tam.grid_to_mask(grid, (200, 400)))
    assert refined and mask.shape == (200, 400)
    ys, xs = np.nonzero(mask)
    # worked at 56x112 and resized back: the red rectangle within a pixel or two at its edges
    assert abs(ys.min() - 100) <= 2 and abs(ys.max() - 119) <= 2
    assert abs(xs.min() - 200) <= 3 and abs(xs.max() - 239) <= 3


def test_a_bad_refine_graph_or_entry_is_refused(tmp_path):
    from export.refine import add_refine
    from omniad_edge.errors import ExportError

    with pytest.raises(ExportError, match="logits"):
        bundle_copy(tmp_path, conv_graph(tmp_path / "bad.onnx", output="out"))
    root = bundle_copy(tmp_path / "b", conv_graph(tmp_path / "r.onnx"))
    manifest = json.loads((root / "manifest.json").read_text())
    for bad, message in (({"path": "refine.onnx", "size": 2, "dilate": 1}, "size"),
                         ({"path": "refine.onnx", "size": 224, "dilate": True}, "dilate"),
                         ({"path": "../refine.onnx", "size": 224, "dilate": 1}, "leaves"),
                         ({"path": "other.onnx", "size": 224, "dilate": 1}, "not listed"),
                         ({"size": 224}, "path")):
        (root / "manifest.json").write_text(json.dumps(dict(manifest, graphs=dict(manifest["graphs"], refine=bad))))
        with pytest.raises(BundleError, match=message):
            load_bundle(root)
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "refine.onnx").write_bytes(b"not onnx")
    with pytest.raises(BundleError, match="refine.onnx"):  # size, then sha256
        load_bundle(root)
    # listed with a matching sha256 but not a graph: refused when loaded, naming it
    add_refine(root, conv_graph(tmp_path / "r2.onnx"))
    graph = root / "refine.onnx"
    graph.write_bytes(b"not onnx")
    from export.manifest import sha256_file

    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"]["refine.onnx"] = {"sha256": sha256_file(graph), "bytes": graph.stat().st_size}
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="refine graph"):
        Inspector(root)


def test_inspector_runs_the_refine_graph_only_when_present(tmp_path):
    from training.splits import generate

    frames = [s for s in generate("test", 12) if s.anomalous][:3]
    plain = Inspector(bundle_copy(tmp_path / "plain"), threads=1)
    assert plain.refiner is None and plain.options["refine"] is False
    with pytest.raises(InspectorError, match="no refine graph"):
        Inspector(plain.bundle, refine=True)
    refined = Inspector(bundle_copy(tmp_path / "toy", conv_graph(tmp_path / "r.onnx", weight=(0, 0, 0, 1))),
                        threads=1)
    off = Inspector(refined.bundle, refine=False, threads=1)
    assert refined.options["refine"] is True and off.refiner is None
    for sample in frames:
        a, b, c = plain.run(sample.image), refined.run(sample.image), off.run(sample.image)
        assert "refine" not in a.timings and not a.mask_refined
        np.testing.assert_array_equal(a.grid, b.grid)
        np.testing.assert_array_equal(a.mask, tam.grid_to_mask(a.grid, sample.mask.shape))
        np.testing.assert_array_equal(c.mask, a.mask)
        assert b.timings["refine"] >= 0 and b.options["refine"] is True
        if a.grid.any():
            # the hand-made graph marks the coarse mask itself (its fourth channel): the refined mask is the grid's
            assert b.mask_refined
            np.testing.assert_array_equal(b.mask, a.mask)
            assert [(x.x0, x.y0, x.x1, x.y1, x.label) for x in b.boxes] == \
                   [(x.x0, x.y0, x.x1, x.y1, x.label) for x in a.boxes]


def test_embedded_bundle_ships_a_refine_graph():
    bundle = load_bundle(None)
    assert bundle.refine is not None and bundle.refine["path"] in bundle.manifest["files"]
    inspector = Inspector(threads=1)
    assert inspector.refiner is not None


def test_a_wrong_output_shape_or_a_vanishing_region_keeps_the_coarse_mask(tmp_path):
    w = numpy_helper.from_array(np.ones((1, 4, 2, 2), np.float32), "W")
    graph = helper.make_graph(  # a 2x2 convolution with stride 2: half the window's size
        [helper.make_node("Conv", ["image", "W"], ["logits"], strides=[2, 2])], "halving",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 4, "h", "w"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, "h2", "w2"])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "half.onnx"))
    refiner = Refiner(load_bundle(bundle_copy(tmp_path, tmp_path / "half.onnx", size=224, dilate=1)))
    grid = np.zeros((16, 16), np.uint8)
    grid[5, 5] = 1
    coarse = tam.grid_to_mask(grid, (224, 224))
    mask, refined = refiner.refine(red_frame(), grid, coarse)
    assert not refined and mask is coarse
    # a 4 px high working size samples 4 of the 16 grid rows: a defect in another row vanishes there
    thin = np.zeros((8, 900, 3), np.uint8)
    grid = np.zeros((16, 16), np.uint8)
    grid[1, 3] = 1
    refiner = Refiner(load_bundle(bundle_copy(tmp_path / "t", conv_graph(tmp_path / "r.onnx"), size=224, dilate=0)))
    assert refiner.logits(thin, grid) is None


def test_without_onnxruntime_the_inspector_runs_without_refinement(monkeypatch, caplog):
    import sys

    inspector = Inspector(threads=1)  # the backend needs onnxruntime; the refine stage alone is checked here
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    with pytest.raises(BackendError, match="not installed"):
        Refiner(inspector.bundle)
    assert inspector._refiner(None, 1) is None and "mask refinement off" in caplog.text
    with pytest.raises(InspectorError, match="refine=True.*not installed"):
        inspector._refiner(True, 1)
