"""`omniad-edge build-engine` argument parsing, the --dry-run plan and the exit codes."""
from __future__ import annotations

import argparse
import importlib.util
import json

import pytest

from helpers.tensorrt_cases import SIZES, full_manifest, write_bundle
from omniad_edge.tensorrt import cli
from omniad_edge.tensorrt.limits import BuildOptions


# -- CLI --------------------------------------------------------------------------------------------------------

def _parser():
    parser = argparse.ArgumentParser(prog="omniad-edge")
    cli.add_parser(parser.add_subparsers(dest="command"))
    return parser


def test_cli_arguments_parse():
    args = _parser().parse_args(["build-engine", "B", "--fp16", "--max-image-tokens", "256", "--max-seq-len", "1024",
                                 "--batch", "2", "--workspace-gb", "1.5", "--timing-cache", "t.cache"])
    opts = cli.options_from_args(args)
    assert opts == BuildOptions(fp16=True, max_image_tokens=256, max_seq_len=1024, batch=2, workspace_gb=1.5,
                                timing_cache="t.cache")
    assert args.func is cli.main


@pytest.mark.parametrize("argv, flag", [(["--batch", "0"], "--batch"), (["--batch", "x"], "--batch"),
                                        (["--workspace-gb", "-1"], "--workspace-gb"),
                                        (["--workspace-gb", "nan"], "--workspace-gb"),
                                        (["--max-seq-len", "1.5"], "--max-seq-len")])


def test_cli_rejects_bad_numbers(argv, flag, capsys):
    with pytest.raises(SystemExit) as info:
        _parser().parse_args(["build-engine", "B", *argv])
    assert info.value.code == 2
    assert flag in capsys.readouterr().err


def test_cli_dry_run_prints_the_plan(tmp_path, capsys):
    root = write_bundle(tmp_path / "b", full_manifest(), SIZES)
    assert cli.main(["build-engine", str(root), "--dry-run", "--max-image-tokens", "32", "--max-seq-len", "256"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["limits"] == {"batch": 1, "max_image_tokens": 32, "max_images": 1, "max_seq_len": 256,
                              "max_prefill": 256}
    assert plan["profiles"]["vision"][0]["pixel_values"] == [[4, 1176], [128, 1176], [128, 1176]]
    assert plan["memory_estimate"]["decoder_weights"] == 50
    assert plan["strongly_typed"] == {"vision": True, "decoder": True}


def test_cli_errors_exit_2_with_the_reason(tmp_path, capsys):
    root = write_bundle(tmp_path / "b", full_manifest(), SIZES)
    assert cli.main([str(root), "--dry-run", "--max-image-tokens", "65"]) == 2
    assert "--max-image-tokens 65 exceeds" in capsys.readouterr().err
    (root / "decoder.onnx").unlink()
    assert cli.main([str(root), "--dry-run"]) == 2
    assert "missing file 'decoder.onnx'" in capsys.readouterr().err
    int8 = write_bundle(tmp_path / "q", full_manifest(precision="int8"), SIZES)
    assert cli.main([str(int8), "--dry-run"]) == 2
    assert "TensorRT cannot parse" in capsys.readouterr().err  # decoder and vision are int8


def test_cli_without_tensorrt_says_how_to_install(tmp_path, capsys):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here; this checks the message where it is not")
    root = write_bundle(tmp_path / "b", full_manifest(), SIZES)
    assert cli.main([str(root)]) == 1
    assert "pip install tensorrt" in capsys.readouterr().err
    assert not (root / "tensorrt" / "build.json").exists()


@pytest.fixture
def fake_device(monkeypatch):
    """`omniad-edge build-engine` with the fake TensorRT and CUDA in place of the real modules."""
    pytest.importorskip("onnx", reason="the fake TensorRT parser reads graphs with the onnx package")
    from helpers.tensorrt_cases import load_sibling
    from omniad_edge.tensorrt import build, cuda as cuda_module

    mod = load_sibling("fake_tensorrt")
    cuda = mod.FakeCuda()
    trt = mod.make_fake_tensorrt(cuda)
    monkeypatch.setattr(build, "import_tensorrt", lambda: trt)
    monkeypatch.setattr(cuda_module, "load_cuda", lambda: cuda)
    return trt, load_sibling("toy_graphs")


def test_cli_tensorrt_failures_are_one_line_errors(fake_device, tmp_path, capsys):
    trt, toy = fake_device
    root = toy.make_toy_bundle(tmp_path / "toy")
    args = [str(root), "--max-seq-len", "128"]
    for fault, step in (("add_optimization_profile", "optimization profile 0"), ("set_shape", "pixel_values"),
                        ("build_serialized_network", "build")):
        trt.faults = {fault}
        assert cli.main(args) == 1
        lines = capsys.readouterr().err.strip().splitlines()  # progress lines, then the error
        errors = [line for line in lines if line.startswith("omniad-edge build-engine: error:")]
        assert errors == [lines[-1]] and "vision engine" in errors[0] and step in errors[0], lines[-1]
        assert not (root / "tensorrt" / "build.json").exists()


def test_cli_corrupt_timing_cache_is_replaced(fake_device, tmp_path, capsys):
    trt, toy = fake_device
    root = toy.make_toy_bundle(tmp_path / "toy")
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"\x00garbage from a crashed run")
    assert cli.main([str(root), "--max-seq-len", "128", "--timing-cache", str(cache)]) == 0
    assert "cannot be read" in capsys.readouterr().err
    assert cache.read_bytes().startswith(b"FAKE-TRT-TIMING-CACHE")  # a fresh cache replaced the corrupt one
    assert (root / "tensorrt" / "build.json").exists()
