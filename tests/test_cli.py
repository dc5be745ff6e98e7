"""`omniad-edge` command line: inspect, export hint, python -m, exit codes."""
import json
import subprocess
import sys

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
