"""The engine build orchestrated against the fake TensorRT (fake_tensorrt.py): engines, record, refusals."""
from __future__ import annotations

import hashlib
import json

import pytest

from helpers.tensorrt_cases import fake_tensorrt, load_sibling
from omniad_edge.errors import BackendError, BundleError
from omniad_edge.tensorrt import build
from omniad_edge.tensorrt.cuda import DeviceInfo
from omniad_edge.tensorrt.limits import BuildOptions


# -- orchestration against the fake TensorRT --------------------------------------------------------------------

@pytest.fixture
def toy_bundle_dir(tmp_path):
    pytest.importorskip("onnx", reason="the toy graphs are built with the onnx package")
    toy = load_sibling("toy_graphs")
    return toy.make_toy_bundle(tmp_path / "toy")


@pytest.fixture
def fake():
    return fake_tensorrt()


def test_build_writes_engines_and_record(toy_bundle_dir, fake, tmp_path):
    trt, cuda = fake
    lines = []
    cache = tmp_path / "timing.cache"
    opts = BuildOptions(max_image_tokens=16, max_seq_len=128, workspace_gb=0.5, timing_cache=str(cache))
    record = build.build_engines(toy_bundle_dir, opts, log=lines.append, trt=trt, cuda=cuda)
    out = toy_bundle_dir / "tensorrt"
    assert sorted(p.name for p in out.iterdir()) == ["build.json", "decoder.engine", "vision.engine"]
    assert json.loads((out / "build.json").read_text()) == record
    assert record["tensorrt"] == "10.3.0" and record["device"] == {
        "name": "Fake Orin", "compute_capability": [8, 7], "integrated": True, "total_memory": 8 << 30}
    manifest_sha = hashlib.sha256((toy_bundle_dir / "manifest.json").read_bytes()).hexdigest()
    assert record["bundle"]["manifest_sha256"] == manifest_sha
    for name in ("vision", "decoder"):
        data = (out / f"{name}.engine").read_bytes()
        assert record["engines"][name]["sha256"] == hashlib.sha256(data).hexdigest()
    builds = [details for what, details in trt.log if what == "build"]
    assert [len(b["profiles"]) for b in builds] == [1, 2]  # vision; decoder prefill + decode
    assert builds[1]["profiles"][1]["inputs_embeds"] == [[1, 1, 8], [1, 1, 8], [1, 1, 8]]
    assert all(b["strongly_typed"] and "TF32" not in b["flags"] for b in builds)
    assert record["profiles"]["vision"][0]["pixel_values"][2] == [64, 1176]
    assert any("Building engine" in line for line in lines)  # progress monitor output
    first = cache.read_bytes()
    assert first.endswith(b"\ntt")  # timing cache written back after both builds
    build.build_engines(toy_bundle_dir, opts, log=lines.append, trt=trt, cuda=cuda)
    assert cache.read_bytes() == first + b"tt"  # and read again on the next build


def test_build_fp16_on_fp32_bundle_is_weakly_typed(toy_bundle_dir, fake):
    trt, cuda = fake
    lines = []
    record = build.build_engines(toy_bundle_dir, BuildOptions(fp16=True, max_seq_len=128), log=lines.append, trt=trt,
                              cuda=cuda)
    vision, decoder = [details for what, details in trt.log if what == "build"]
    assert not decoder["strongly_typed"] and "FP16" in decoder["flags"]
    # the toy vision graph has no block names: the whole vision engine stays fp32
    assert "FP16" not in vision["flags"] and record["flags"]["vision_fp32_layers"] == "all"
    assert any("keeping the vision engine fp32" in line for line in lines)


def test_refusals_happen_before_any_build(toy_bundle_dir, fake):
    trt, cuda = fake
    with pytest.raises(BackendError, match="8.9"):
        build.build_engines(toy_bundle_dir, BuildOptions(fp8=True), log=lambda _: None, trt=trt, cuda=cuda)
    with pytest.raises(BundleError, match="QuantizeLinear"):
        build.build_engines(toy_bundle_dir, BuildOptions(int8=True), log=lambda _: None, trt=trt, cuda=cuda)
    cuda.info = DeviceInfo("Tiny", (8, 7), total_memory=64 << 20, free_memory=1 << 20)
    with pytest.raises(BackendError, match="not enough device memory"):
        build.build_engines(toy_bundle_dir, BuildOptions(), log=lambda _: None, trt=trt, cuda=cuda)
    assert not [what for what, _ in trt.log if what == "build"]
    assert not (toy_bundle_dir / "tensorrt" / "build.json").exists()
    build.build_engines(toy_bundle_dir, BuildOptions(max_seq_len=128, skip_memory_check=True), log=lambda _: None,
                     trt=trt, cuda=cuda)


def test_graph_that_breaks_the_contract_is_refused(toy_bundle_dir, fake):
    trt, cuda = fake
    manifest = json.loads((toy_bundle_dir / "manifest.json").read_text())
    manifest["model"]["num_layers"] = 3  # the decoder graph has 2 layers
    (toy_bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"missing inputs \['past_key.2', 'past_value.2'\]"):
        build.build_engines(toy_bundle_dir, BuildOptions(max_seq_len=128), log=lambda _: None, trt=trt, cuda=cuda)


def _set_precisions(root, **graphs):
    toy = load_sibling("toy_graphs")
    manifest = json.loads((root / "manifest.json").read_text())
    for graph, precision in graphs.items():
        manifest["graphs"][graph]["precision"] = precision
    toy.write_manifest(root, manifest)


def test_tensorrt_11_refuses_fp16_on_any_fp32_graph_before_building(toy_bundle_dir):
    """TensorRT 11 has no weak typing: --fp16 cannot lower an fp32 vision graph beside an fp16 decoder."""
    mod = load_sibling("fake_tensorrt")
    cuda = mod.FakeCuda()
    trt = mod.make_fake_tensorrt(cuda, version="11.1.0")
    _set_precisions(toy_bundle_dir, vision="fp32", decoder="fp16")
    with pytest.raises(BackendError, match="vision graph.*TensorRT 11.1.0"):
        build.build_engines(toy_bundle_dir, BuildOptions(fp16=True, max_seq_len=128), log=lambda _: None, trt=trt,
                            cuda=cuda)
    assert not [what for what, _ in trt.log if what == "build"]
    record = build.build_engines(toy_bundle_dir, BuildOptions(max_seq_len=128), log=lambda _: None, trt=trt,
                                 cuda=cuda)  # without --fp16: strongly typed, as the graphs say
    assert all(details["strongly_typed"] for what, details in trt.log if what == "build")
    assert record["flags"]["vision_strongly_typed"] and record["flags"]["decoder_strongly_typed"]


@pytest.mark.slow
def test_fp16_pins_the_tail_mlp_compute_layers_of_a_real_export(tiny_bundle_plain, tmp_path, fake):
    """The parser names constants after initializers and compute layers after nodes (node_Gemm_N in a dynamo
    export): the pins must reach the MatMul/Gemm layers that consume the tail blocks' MLP weights."""
    import shutil

    import onnx

    trt, cuda = fake
    root = shutil.copytree(tiny_bundle_plain, tmp_path / "tiny")
    lines = []
    record = build.build_engines(root, BuildOptions(fp16=True, max_image_tokens=16, max_seq_len=64),
                                 log=lines.append, trt=trt, cuda=cuda)
    vision = next(details for what, details in trt.log if what == "build" and details["onnx"].endswith("vision.onnx"))
    depth = json.loads((root / "manifest.json").read_text())["model"]["vision"]["depth"]
    tail = {f"blocks.{b}.mlp.{w}.weight" for b in (depth - 2, depth - 1) for w in ("gate_proj", "up_proj",
                                                                                       "down_proj")}
    graph = onnx.load(str(root / "vision.onnx"), load_external_data=False).graph
    consumers = {n.name for n in graph.node if tail & set(n.input)}
    assert len(consumers) == 6
    pinned = {name: kind for name, kind in vision["pinned"]}
    assert consumers <= set(pinned)  # every MLP matmul of the last two blocks runs fp32
    assert all(pinned[name] == "MATRIX_MULTIPLY" for name in consumers)
    assert "FP16" in vision["flags"] and "OBEY_PRECISION_CONSTRAINTS" in vision["flags"]
    reported = record["flags"]["vision_fp32_layers"]
    assert sorted(reported["layers"]) == sorted(pinned)  # build.json reports what was really pinned
    assert reported["mlp_blocks"] == [depth - 2, depth - 1]
    # weak typing elsewhere too: the decoder's rotary angles (cos/sin) and RMSNorm reductions stay fp32
    decoder = next(details for what, details in trt.log if what == "build" and details["onnx"].endswith("decoder.onnx"))
    nodes = onnx.load(str(root / "decoder.onnx"), load_external_data=False).graph.node
    must = {n.name for n in nodes if n.op_type in ("Cos", "Sin", "ReduceMean")}
    assert len(must) >= 4 and must <= {name for name, _ in decoder["pinned"]}
    assert record["flags"]["decoder_fp32_layers"]["counts"]["rotary"] >= 2


@pytest.mark.slow
def test_int4_qdq_bundle_builds_and_matches_onnxruntime(tiny_checkpoint, tmp_path, fake):
    """--int4-format qdq (DequantizeLinear INT4 + MatMul) is TensorRT-parsable: built strongly typed, it runs."""
    import shutil

    import numpy as np
    from export import export_bundle
    from helpers.cache import cached_dir, source_key
    from omniad_edge.backends.onnxruntime import OnnxRuntimeBackend
    from omniad_edge.bundle import load_bundle
    from omniad_edge.tensorrt.backend import TensorRTBackend

    options = {"target": "tensorrt"}  # int4 as qdq; the same cached bundle as tests/test_export.py
    source = cached_dir("tiny-bundle-custom-int4-tensorrt", source_key("int4", repr(sorted(options.items()))),
                        lambda p: export_bundle(tiny_checkpoint, p, quiet=True, precision="int4", **options))
    root = shutil.copytree(source, tmp_path / "int4")
    trt, cuda = fake
    record = build.build_engines(root, BuildOptions(max_image_tokens=16, max_seq_len=64), log=lambda _: None, trt=trt,
                                 cuda=cuda)
    assert record["flags"]["decoder_strongly_typed"]
    bundle = load_bundle(root)
    gpu, cpu = TensorRTBackend(bundle, _trt=trt, _cuda=cuda), OnnxRuntimeBackend(bundle, threads=1)
    table = np.asarray(bundle.embed_tokens())
    ids = np.arange(10, 19)
    embeds, positions = table[ids][None], np.broadcast_to(np.arange(9), (3, 1, 9)).copy()
    got = gpu.forward(embeds, positions, np.ones((1, 9), np.int64), gpu.new_cache(1, 16), 0).copy()
    want = cpu.forward(embeds, positions, np.ones((1, 9), np.int64), cpu.new_cache(1, 16), 0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
