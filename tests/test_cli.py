"""`omniad-edge` command line: inspect, export hint, python -m, exit codes."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers.frames import make_frame
from omniad_edge import cli
from omniad_edge.inspection import mask_from_rle


def _png(path, h=64, w=80, seed=0):
    Image.fromarray(make_frame(h, w, seed=seed)).save(path)
    return path


def test_inspect_writes_json_and_overlays(tiny_bundle, tmp_path, capsys):
    pytest.importorskip("omniad_edge._native", reason="the native sampler/codec module is not built")
    a, b = _png(tmp_path / "a.png"), _png(tmp_path / "b.png", 72, 96, seed=1)
    out = tmp_path / "out" / "results.json"
    code = cli.main(["inspect", str(a), str(b), "--engine", str(tiny_bundle), "--json", str(out),
                     "--overlay-dir", str(tmp_path / "ov"), "--threads", "1", "--max-new-tokens", "6"])
    assert code == 0
    rows = json.loads(out.read_text())
    assert [r["image"] for r in rows] == [str(a), str(b)]
    assert mask_from_rle(rows[1]["mask"]).shape == (72, 96)
    assert (tmp_path / "ov" / "a_overlay.png").is_file()
    printed = capsys.readouterr().out
    assert "a.png:" in printed and "score=" in printed


def test_bad_image_is_reported_and_the_rest_still_runs(tiny_bundle, tmp_path, capsys):
    pytest.importorskip("omniad_edge._native", reason="the native sampler/codec module is not built")
    good = _png(tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    out = tmp_path / "r.json"
    code = cli.main(["inspect", str(bad), str(good), "--engine", str(tiny_bundle), "--json", str(out),
                     "--no-mask", "--max-new-tokens", "4", "--threads", "1"])
    assert code == 2
    rows = json.loads(out.read_text())
    assert "cannot read" in rows[0]["error"] and "mask" not in rows[1] and "score" in rows[1]
    assert "bad.png: error" in capsys.readouterr().err


def test_missing_bundle_exits_2(tmp_path, capsys):
    assert cli.main(["inspect", str(_png(tmp_path / "a.png")), "--engine", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_export_without_torch_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    assert cli.main(["export", "ckpt", "out"]) == 2
    assert "pip install omniad-edge[export]" in capsys.readouterr().err


def test_adapt_without_torch_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    assert cli.main(["adapt", str(tmp_path), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "pip install omniad-edge[train]" in err and "missing: torch" in err


def test_adapt_reports_a_bad_folder_with_exit_2(tmp_path, capsys):
    pytest.importorskip("torch")
    assert cli.main(["adapt", str(tmp_path), "--out", str(tmp_path / "b")]) == 2
    assert "no images" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_export_forwards_its_arguments(monkeypatch):
    seen = {}
    import types

    fake = types.ModuleType("export.cli")
    fake.main = lambda argv: seen.setdefault("argv", argv) and 0
    monkeypatch.setitem(sys.modules, "export.cli", fake)
    monkeypatch.setitem(sys.modules, "export", types.ModuleType("export"))
    assert cli.main(["export", "ckpt", "out", "--precision", "fp16"]) == 0
    assert seen["argv"] == ["ckpt", "out", "--precision", "fp16"]


def test_python_dash_m_and_version():
    run = subprocess.run([sys.executable, "-m", "omniad_edge", "--version"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0 and run.stdout.startswith("omniad-edge ")


def test_unknown_command_is_a_usage_error():
    with pytest.raises(SystemExit) as exc:
        cli.main(["frobnicate"])
    assert exc.value.code == 2


def test_demo_prints_one_table_row_per_frame_matching_results_json(tmp_path, capsys):
    from pathlib import Path

    if not (Path(__file__).resolve().parents[1] / "omniad_edge" / "models" / "default" / "manifest.json").is_file():
        pytest.fail("the embedded default bundle is missing")
    assert cli.main(["demo", "--out", str(tmp_path / "d"), "--n", "3"]) == 0
    out = capsys.readouterr().out
    rows = json.loads((tmp_path / "d" / "results.json").read_text())
    table = [line for line in out.splitlines() if line.startswith("| frame_")]
    assert len(table) == len(rows) == 3
    for line, row in zip(table, rows):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == row["frame"] and cells[3] == row["truth"]
        assert cells[4].startswith("anomalous" if row["anomalous"] else "normal")
        assert ("(wrong)" in cells[4]) == (not row["correct"])
        assert float(cells[5]) == pytest.approx(row["score"], abs=5e-4)


def _video(path, samples):
    """A real MJPG .avi of synthetic frames (OpenCV writes BGR)."""
    import cv2

    h, w = samples[0].image.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (w, h))
    for sample in samples:
        writer.write(np.ascontiguousarray(sample.image[:, :, ::-1]))
    writer.release()
    return path


def test_watch_prints_a_json_line_per_frame_matching_the_inspector(tmp_path, capsys):
    from omniad_edge import Inspector
    from omniad_edge.sources import VideoSource
    from omniad_edge.synth import make_sample

    samples = [make_sample(7000 + i, size=224, anomalous=i % 2 == 1) for i in range(6)]
    video = _video(tmp_path / "line.avi", samples)
    code = cli.main(["watch", str(video), "--json-lines", "--threads", "1", "--overlay-dir", str(tmp_path / "ov")])
    captured = capsys.readouterr()
    assert code == 0
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [line["frame"] for line in lines] == list(range(6))
    inspector = Inspector(threads=1)  # the frames as the source decodes them (MJPG is lossy)
    expected = [inspector.run(frame.image) for frame in VideoSource(video)]
    for line, want in zip(lines, expected):
        assert line["verdict"] == ("anomalous" if want.is_anomalous else "normal")
        assert line["score"] == pytest.approx(want.score, abs=1e-5)
        assert line["boxes"] == [b.to_dict() for b in want.boxes]
        assert line["defect_type"] == want.defect_type and set(line["timings"]) >= {"vision", "decode", "total"}
        assert (tmp_path / "ov" / f"frame_{line['frame']:06d}_overlay.png").is_file()
    anomalous = sum(w.is_anomalous for w in expected)
    assert anomalous >= 1 and any(line["boxes"] for line in lines)  # the comparison covers boxes, not only "ok"
    assert f"watch: 6 frames inspected, 0 dropped, {anomalous} anomalous, 0 failed, median" in captured.err


def test_watch_folder_reports_bad_images_and_goes_on(tmp_path, capsys):
    _png(tmp_path / "a.png", 64, 80)
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    _png(tmp_path / "c.png", 72, 96, seed=1)
    assert cli.main(["watch", str(tmp_path), "--threads", "1"]) == 0
    captured = capsys.readouterr()
    assert [line.split(":")[0] for line in captured.out.splitlines()] == ["a.png", "c.png"]
    assert "skipping" in captured.err and "b.png" in captured.err
    assert "watch: 2 frames inspected" in captured.err


def test_watch_missing_source_exits_2(tmp_path, capsys):
    assert cli.main(["watch", str(tmp_path / "none.avi")]) == 2
    assert f"video file {str(tmp_path / 'none.avi')!r} does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["watch", str(tmp_path / "empty")]) == 2
    assert "holds no images" in capsys.readouterr().err


def test_serve_without_ray_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    assert cli.main(["serve", "--replicas", "2"]) == 2
    assert "pip install omniad-edge[serve]" in capsys.readouterr().err


def test_watch_without_opencv_names_the_extra(tmp_path, monkeypatch, capsys):
    video = tmp_path / "a.avi"
    video.write_bytes(b"RIFF")
    monkeypatch.setitem(sys.modules, "cv2", None)
    assert cli.main(["watch", str(video)]) == 2
    assert "pip install omniad-edge[camera]" in capsys.readouterr().err
