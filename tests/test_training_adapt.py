"""training/adapt.py (`omniad-edge adapt`): end to end on a tiny budget, with an interrupted run, a budget too small
to learn anything, a resume, and a bundle the Inspector runs; nothing half-written at OUT at any point."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")
pytest.importorskip("transformers")

from omniad_edge import synth  # noqa: E402
from omniad_edge.errors import AdaptError, DataError  # noqa: E402


def _good(folder: Path, n: int = 4) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(synth.make_sample(10 + i, anomalous=False, surface="wood").image).save(folder / f"{i}.png")
    return folder


def _args(good: Path, out: Path, *extra: str):
    from training.adapt import build_parser

    return build_parser().parse_args([str(good), "--out", str(out), "--batch", "2", "--threads", "1",
                                      "--clock", "cpu", "--quiet", *extra])


def test_adapt_interrupt_refuse_resume_and_ship(tmp_path, monkeypatch):
    from training import adapt, train

    good, out = _good(tmp_path / "good"), tmp_path / "station"
    work = tmp_path / "station.adapt"

    # 1. Ctrl-C after 3 steps: a checkpoint, a clear error, nothing at OUT
    calls = {"n": 0}
    real_call = train.Objective.__call__

    def interrupt_after_three(self, batch):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        return real_call(self, batch)

    monkeypatch.setattr(train.Objective, "__call__", interrupt_after_three)
    with pytest.raises(AdaptError, match="interrupted at step 3.*same command resumes"):
        adapt.run(_args(good, out, "--minutes", "5"))
    monkeypatch.setattr(train.Objective, "__call__", real_call)
    assert not out.exists() and (work / "state.pt").is_file()

    # 2. the same run with a budget already spent: 3 steps are too few to learn anything; refused, said so
    with pytest.raises(AdaptError, match="3 training steps .* too little to learn anything"):
        adapt.run(_args(good, out, "--minutes", "0.0001"))
    assert not out.exists()

    # 3. other settings on the same work folder are refused, not mixed in; so is another LR schedule
    with pytest.raises(AdaptError, match="other inputs or settings.*--restart"):
        adapt.run(_args(good, out, "--minutes", "0.3", "--seed", "1"))
    with pytest.raises(AdaptError, match="5.0-minute schedule, not --schedule-minutes 7"):
        adapt.run(_args(good, out, "--minutes", "0.3", "--schedule-minutes", "7"))

    # 4. resumed with a real (tiny) budget: exported, evaluated, written. The schedule is the first call's (5 min):
    # at 0.3 minutes the learning rate is still near its peak, not decayed over a 0.3-minute schedule
    progress = []
    real_lr_at = train.lr_at

    def record(step, frac, peak, warmup):
        progress.append(frac)
        return real_lr_at(step, frac, peak, warmup)

    monkeypatch.setattr(train, "lr_at", record)
    report = adapt.run(_args(good, out, "--minutes", "0.3", "--allow-worse", "--refine-steps", "2"))
    assert report["schedule"]["minutes"] == 5.0 and 0 < max(progress) <= 0.3 / 5.0 + 0.01
    assert report["resumed_at_step"] == 3
    assert report["steps"] >= adapt.MIN_STEPS and report["shipped"]
    assert "| adapted (" in report["table"] and "starting model" in report["table"]
    for key in ("auroc", "verdict_acc", "grid_iou"):
        assert key in report["adapted"] and key in report["baseline"]
    assert not list(tmp_path.glob(".station.*"))  # no temporary bundle left behind

    # the embedded bundle's refine graph was fine-tuned and the better of the two kept, the figures reported
    from omniad_edge.bundle import DEFAULT_BUNDLE_DIR, load_bundle

    refine = report["refine"]
    assert refine["steps"] == 2 and refine["kept"] in ("old", "fine-tuned") and refine["n"] >= 1
    assert all(0.0 <= refine[k] <= 1.0 for k in ("grid", "old", "fine_tuned"))
    assert (refine["kept"] == "fine-tuned") == (refine["fine_tuned"] > max(refine["grid"], refine["old"]))
    kept = work / "refine.onnx" if refine["kept"] == "fine-tuned" else DEFAULT_BUNDLE_DIR / "refine.onnx"
    assert load_bundle(out).refine is not None and (out / "refine.onnx").read_bytes() == kept.read_bytes()

    from omniad_edge import Inspector

    with Inspector(str(out), mode="explain") as inspector:
        assert inspector.bundle.manifest["output"]["mask"]["labels"][-1] == "anomaly"
        result = inspector.run(synth.make_sample(99, surface="wood").image)
    assert isinstance(result.is_anomalous, bool) and 0.0 <= result.score <= 1.0

    # 5. OUT exists now: refused without --overwrite, before any training
    with pytest.raises(AdaptError, match="exists; give --overwrite"):
        adapt.run(_args(good, out, "--minutes", "0.3"))


def test_bad_folders_are_refused_before_any_training(tmp_path):
    from training import adapt

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no images"):
        adapt.run(_args(empty, tmp_path / "out", "--minutes", "1"))
    good = _good(tmp_path / "good", 2)
    with pytest.raises(AdaptError, match="keep-old-surfaces"):
        adapt.run(_args(good, tmp_path / "out", "--keep-old-surfaces", "1.5"))
    with pytest.raises(AdaptError, match="--schedule-minutes must be positive"):
        adapt.run(_args(good, tmp_path / "out", "--schedule-minutes", "0"))
    with pytest.raises(AdaptError, match="--refine-steps must be 0 or more"):
        adapt.run(_args(good, tmp_path / "out", "--refine-steps", "-1"))
    with pytest.raises(SystemExit):  # argparse names the choices
        _args(good, tmp_path / "out", "--generators", "warp")
    assert _args(good, tmp_path / "out").generators == ["painted", "cutpaste", "texture", "resample", "frequency"]
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.adapt").exists()
