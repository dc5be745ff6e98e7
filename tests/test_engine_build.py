"""build-engine planning rules (pure, every machine) and the build orchestration against a fake TensorRT."""
from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

from omniad_edge import engine_build as eb
from omniad_edge.engine_build import BuildOptions, DeviceInfo, Limits
from omniad_edge.errors import BackendError, BundleError


def _load_sibling(name):
    spec = importlib.util.spec_from_file_location(f"_omniad_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def qwen3b_manifest(**overrides) -> dict:
    """Qwen2.5-VL-3B's published shapes (config.json), as the exporter would write them."""
    manifest = {
        "format": "omniad-edge-bundle", "format_version": 1, "name": "qwen3b-like", "precision": "fp32",
        "model": {"architecture": "qwen2_5_vl", "hidden_size": 2048, "num_layers": 36, "num_attention_heads": 16,
                  "num_key_value_heads": 2, "head_dim": 128, "vocab_size": 151936, "intermediate_size": 11008,
                  "max_position": 128000,
                  "vision": {"depth": 32, "hidden_size": 1280, "num_heads": 16, "out_hidden_size": 2048,
                             "patch_size": 14, "temporal_patch_size": 2, "spatial_merge_size": 2,
                             "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31]}},
        "preprocess": {"patch_size": 14, "merge_size": 2, "temporal_patch_size": 2, "min_pixels": 3136,
                       "max_pixels": 1003520, "max_image_tokens": 1280},
        "graphs": {"vision": {"path": "vision.onnx"}, "decoder": {"path": "decoder.onnx", "kv_layout": "BSHD"}},
        "files": {"vision.onnx": {"sha256": "0", "bytes": 1000}, "vision.onnx.data": {"sha256": "0", "bytes": 2 << 30},
                  "decoder.onnx": {"sha256": "0", "bytes": 5000},
                  "decoder.onnx.data": {"sha256": "0", "bytes": 12 << 30},
                  "embed_tokens.npy": {"sha256": "0", "bytes": 151936 * 2048 * 4},
                  "tokenizer.json": {"sha256": "0", "bytes": 7000}},
        "embed_tokens": {"path": "embed_tokens.npy", "dtype": "float32", "shape": [151936, 2048]},
    }
    manifest.update(overrides)
    return manifest


def small_manifest() -> dict:
    m = qwen3b_manifest()
    m["model"].update(hidden_size=16, num_layers=2, num_key_value_heads=2, head_dim=8, vocab_size=100,
                      max_position=4096)
    m["preprocess"]["max_image_tokens"] = 64
    return m


ORIN = DeviceInfo(name="Orin", compute_capability=(8, 7), total_memory=8 << 30, free_memory=6 << 30, integrated=True)
H100 = DeviceInfo(name="NVIDIA H100", compute_capability=(9, 0), total_memory=80 << 30, free_memory=79 << 30)
V100 = DeviceInfo(name="Tesla V100", compute_capability=(7, 0), total_memory=16 << 30, free_memory=15 << 30)
P4 = DeviceInfo(name="Tesla P4", compute_capability=(6, 1), total_memory=8 << 30, free_memory=7 << 30)


# -- limits -----------------------------------------------------------------------------------------------------

def test_default_limits_come_from_the_manifest():
    limits = eb.resolve_limits(qwen3b_manifest(), BuildOptions())
    # 1280 tokens + 512 prompt/answer, rounded up to a multiple of 256
    assert limits == Limits(batch=1, max_image_tokens=1280, max_images=1, max_seq_len=1792, max_prefill=1792)
    assert eb.resolve_limits(qwen3b_manifest(), BuildOptions(batch=3)).max_images == 3


def test_token_cap_falls_back_to_max_pixels():
    m = qwen3b_manifest()
    del m["preprocess"]["max_image_tokens"]
    assert eb.image_token_cap(m) == 1003520 // (28 * 28) == 1280


@pytest.mark.parametrize("opts, flag", [
    (BuildOptions(max_image_tokens=2000), "--max-image-tokens"),
    (BuildOptions(max_image_tokens=0), "--max-image-tokens"),
    (BuildOptions(max_seq_len=1000), "--max-seq-len"),  # < 1280 image tokens + prompt
    (BuildOptions(max_seq_len=200000), "--max-seq-len"),  # > max_position
    (BuildOptions(batch=0), "--batch"),
    (BuildOptions(batch=True), "--batch"),
    (BuildOptions(batch=65), "--batch"),
    (BuildOptions(max_prefill=100), "--max-prefill"),
    (BuildOptions(max_seq_len=2048, max_prefill=4096), "--max-prefill"),
    (BuildOptions(workspace_gb=0), "--workspace-gb"),
    (BuildOptions(vision_fp32_blocks=33), "--vision-fp32-blocks"),
])
def test_bad_limits_name_the_flag(opts, flag):
    with pytest.raises(ValueError, match=flag):
        eb.resolve_limits(qwen3b_manifest(), opts)


# -- profiles ---------------------------------------------------------------------------------------------------

def test_vision_profile_counts_patches_as_four_per_token():
    limits = Limits(batch=1, max_image_tokens=1280, max_images=2, max_seq_len=4096, max_prefill=4096)
    p = eb.vision_profile(qwen3b_manifest(), limits)
    assert p["pixel_values"] == ((4, 1176), (5120, 1176), (10240, 1176))
    assert p["rotary_pos_ids"] == ((4, 2), (5120, 2), (10240, 2))
    assert p["window_index"] == p["reverse_window_index"] == ((1,), (1280,), (2560,))
    assert p["window_segments"] == p["image_segments"] == ((4,), (5120,), (10240,))
    assert tuple(p) == eb.VISION_INPUTS


def test_decoder_profiles_prefill_and_decode():
    m = small_manifest()
    limits = Limits(batch=2, max_image_tokens=64, max_images=2, max_seq_len=512, max_prefill=256)
    prefill, decode = eb.decoder_profiles(m, limits)
    # prefill: S in [1, 64 + 128, 256]; past up to the cache size; mask covers past + new
    assert prefill["inputs_embeds"] == ((1, 1, 16), (1, 192, 16), (2, 256, 16))
    assert prefill["position_ids"] == ((3, 1, 1), (3, 1, 192), (3, 2, 256))
    assert prefill["attention_mask"] == ((1, 1), (1, 192), (2, 768))
    assert prefill["past_key.1"] == ((1, 0, 2, 8), (1, 0, 2, 8), (2, 512, 2, 8))
    # decode: one token; opt past = opt prompt + 128
    assert decode["inputs_embeds"] == ((1, 1, 16), (1, 1, 16), (2, 1, 16))
    assert decode["attention_mask"] == ((1, 1), (1, 321), (2, 513))
    assert decode["past_value.0"] == ((1, 0, 2, 8), (1, 320, 2, 8), (2, 512, 2, 8))
    expected = ["inputs_embeds", "position_ids", "attention_mask", "past_key.0", "past_value.0", "past_key.1",
                "past_value.1"]
    assert sorted(prefill) == sorted(decode) == sorted(expected) == sorted(eb.decoder_input_names(m))


def test_every_profile_is_ordered():
    m = qwen3b_manifest()
    for opts in (BuildOptions(), BuildOptions(batch=4, max_image_tokens=256, max_seq_len=1024, max_prefill=512)):
        limits = eb.resolve_limits(m, opts)
        for profile in [eb.vision_profile(m, limits), *eb.decoder_profiles(m, limits)]:
            for name, (low, opt, high) in profile.items():
                assert all(a <= b <= c for a, b, c in zip(low, opt, high)), name


# -- memory -----------------------------------------------------------------------------------------------------

def test_kv_cache_size_for_qwen3b():
    limits = Limits(batch=1, max_image_tokens=1280, max_images=1, max_seq_len=2048, max_prefill=2048)
    # 36 layers x (K + V) x 2048 positions x 2 heads x 128 dims x 4 bytes = 144 MiB
    assert eb.kv_cache_bytes(qwen3b_manifest(), limits) == 144 << 20
    assert eb.kv_scratch_bytes(qwen3b_manifest(), limits) == 0
    batched = Limits(batch=2, max_image_tokens=1280, max_images=2, max_seq_len=2048, max_prefill=512)
    assert eb.kv_scratch_bytes(qwen3b_manifest(), batched) == 36 * 2 * 2 * 512 * 2 * 128 * 4


def test_io_buffer_plan():
    limits = Limits(batch=2, max_image_tokens=64, max_images=2, max_seq_len=512, max_prefill=256)
    plan = eb.io_buffer_plan(small_manifest(), limits)
    assert plan["vision.pixel_values"] == 512 * 1176 * 4  # 4 x 64 tokens x 2 images
    assert plan["vision.window_index"] == 128 * 8
    assert plan["vision.image_embeds"] == 128 * 2048 * 4
    assert plan["decoder.inputs_embeds"] == 2 * 256 * 16 * 4
    assert plan["decoder.attention_mask"] == 2 * (512 + 256) * 8
    assert plan["decoder.logits"] == 2 * 100 * 4


def test_memory_estimate_parts():
    m = qwen3b_manifest()
    limits = Limits(batch=1, max_image_tokens=1280, max_images=1, max_seq_len=2048, max_prefill=2048)
    est = eb.estimate_memory(m, limits)
    assert est.weights == 1000 + (2 << 30) + 5000 + (12 << 30)
    assert est.parts["vision_weights"] == 1000 + (2 << 30)
    # vision: scores + probabilities for 16 heads over 5120 patches in float32, plus MLP/activation rows
    assert est.parts["vision_activations"] == 2 * 16 * 5120 * 5120 * 4 + 16 * 5120 * 1280 * 4
    assert est.kv_cache == 144 << 20 and est.host_embeddings == 0
    assert est.total == (est.weights + est.kv_cache + est.activations + est.io_buffers + eb.RUNTIME_OVERHEAD)
    half = eb.estimate_memory(m, limits, fp16=True)
    assert half.weights == est.weights // 2 and half.parts["vision_activations"] == est.parts["vision_activations"] // 2
    jetson = eb.estimate_memory(m, limits, integrated=True)
    assert jetson.host_embeddings == 151936 * 2048 * 4  # the host embedding table shares Jetson's memory
    assert "GiB" in est.describe()


def test_memory_grows_with_every_limit():
    m = qwen3b_manifest()
    base = eb.estimate_memory(m, eb.resolve_limits(m, BuildOptions(max_image_tokens=256, max_seq_len=1024))).total
    for opts in (BuildOptions(max_image_tokens=512, max_seq_len=1024),
                 BuildOptions(max_image_tokens=256, max_seq_len=2048),
                 BuildOptions(max_image_tokens=256, max_seq_len=1024, batch=2)):
        assert eb.estimate_memory(m, eb.resolve_limits(m, opts)).total > base


def test_memory_check_refuses_with_advice():
    m = qwen3b_manifest()
    est = eb.estimate_memory(m, eb.resolve_limits(m, BuildOptions()), integrated=True)
    with pytest.raises(BackendError, match="--max-image-tokens") as info:
        eb.check_memory(est, ORIN)  # 14 GiB of fp32 weights cannot fit an 8 GB Orin
    assert "Orin" in str(info.value)
    eb.check_memory(est, H100)


# -- precision --------------------------------------------------------------------------------------------------

def test_fp8_needs_ada_or_hopper():
    with pytest.raises(BackendError, match="8.9"):
        eb.check_precision(BuildOptions(fp8=True), ORIN, "10.3.0", "fp16")
    eb.check_precision(BuildOptions(fp8=True), H100, "10.3.0", "fp16")


def test_int8_and_fp16_on_a_capable_gpu():
    eb.check_precision(BuildOptions(int8=True, fp16=True), ORIN, "10.3.0", "fp32")
    # every GPU TensorRT 10 runs on has int8 and fp16 (>= 6.1); older ones are refused as a whole
    with pytest.raises(BackendError, match="Tesla P4.*not supported"):
        eb.check_precision(BuildOptions(int8=True), P4, "10.3.0", "fp32")


def test_tensorrt_older_than_10_is_refused():
    with pytest.raises(BackendError, match="int64 inputs need TensorRT 10"):
        eb.check_precision(BuildOptions(), ORIN, "8.6.2", "fp32")


def test_gpu_generation_supported_by_the_tensorrt_version():
    eb.check_precision(BuildOptions(), V100, "10.3.0", "fp32")
    with pytest.raises(BackendError, match="not supported by TensorRT 10.5.0"):
        eb.check_precision(BuildOptions(), V100, "10.5.0", "fp32")


def test_fp16_on_fp32_bundle_needs_weak_typing():
    assert not eb.strongly_typed(BuildOptions(fp16=True), "fp32")
    assert eb.strongly_typed(BuildOptions(fp16=True), "fp16")
    assert eb.strongly_typed(BuildOptions(), "fp32")
    with pytest.raises(BackendError, match="--precision fp16"):
        eb.check_precision(BuildOptions(fp16=True), H100, "11.0.0", "fp32")


@pytest.mark.parametrize("precision, ok", [("fp32", True), ("fp16", True), ("int8", False), ("int4", False),
                                          ("bf16", False)])
def test_bundle_precision_for_tensorrt(precision, ok):
    m = qwen3b_manifest(precision=precision)
    if ok:
        eb.check_bundle_precision(m)
    else:
        with pytest.raises(BundleError, match=precision):
            eb.check_bundle_precision(m)


def test_graph_precision_overrides_the_bundle_precision():
    m = qwen3b_manifest(precision="fp16")
    m["graphs"]["vision"]["precision"] = "int8"  # the exporter's int8 vision with an fp16 decoder
    with pytest.raises(BundleError, match="vision graph is 'int8'"):
        eb.check_bundle_precision(m)
    m["graphs"]["vision"]["precision"] = "fp32"
    eb.check_bundle_precision(m)
    assert eb.graph_precision(m, "vision") == "fp32" and eb.graph_precision(m, "decoder") == "fp16"


def test_quantization_flags_need_qdq_nodes():
    with pytest.raises(BundleError, match="--int8.*decoder"):
        eb.check_quantization(BuildOptions(int8=True), 0, 0, "decoder")
    with pytest.raises(BundleError, match="--fp8"):
        eb.check_quantization(BuildOptions(fp8=True), 12, 0, "decoder")
    eb.check_quantization(BuildOptions(int8=True, fp8=True), 3, 4, "decoder")
    eb.check_quantization(BuildOptions(), 0, 0, "vision")


def test_vision_fp32_layers_pick_the_tail_mlps_only():
    names = ["/blocks.3/mlp/down_proj/MatMul", "/blocks.30/mlp/down_proj/MatMul", "/blocks.31/attn/qkv/MatMul",
             "visual.blocks.31.mlp.gate_proj", "/merger/mlp.0/MatMul", "node_MatMul_12", "/blocks.29/mlp/act"]
    assert eb.vision_fp32_layers(names, depth=32, tail_blocks=2) == [1, 3]
    assert eb.vision_fp32_layers(names, depth=32, tail_blocks=3) == [1, 3, 6]
    assert eb.vision_fp32_layers(names, depth=32, tail_blocks=0) == []


# -- build record -----------------------------------------------------------------------------------------------

def _record(**changes):
    limits = Limits(batch=1, max_image_tokens=64, max_images=1, max_seq_len=512, max_prefill=512)
    record = eb.make_record(trt_version="10.3.0", device=ORIN, opts=BuildOptions(fp16=True), limits=limits,
                            manifest_sha="abc", bundle_name="b", profiles={}, precision={"strongly_typed": False},
                            engines={"vision": {"path": "vision.engine"}, "decoder": {"path": "decoder.engine"}},
                            build_seconds=12.34)
    record = json.loads(json.dumps(record))  # as read back from disk
    record.update(changes)
    return record


def test_record_matches_its_device():
    record = _record()
    assert record["device"]["compute_capability"] == [8, 7] and record["flags"]["fp16"] is True
    assert eb.record_limits(record) == Limits(batch=1, max_image_tokens=64, max_images=1, max_seq_len=512,
                                              max_prefill=512)
    eb.check_record(record, trt_version="10.3.0", device=ORIN, manifest_sha="abc")


@pytest.mark.parametrize("kwargs, match", [
    ({"trt_version": "10.4.0"}, "TensorRT 10.3.0.*TensorRT 10.4.0"),
    ({"device": H100}, "built for Orin.*NVIDIA H100"),
    ({"device": DeviceInfo("Orin", (8, 6), 1, 1)}, "compute capability 8.6"),
    ({"manifest_sha": "def"}, "another version of this bundle"),
])
def test_record_mismatch_says_rebuild(kwargs, match):
    args = {"trt_version": "10.3.0", "device": ORIN, "manifest_sha": "abc", **kwargs}
    with pytest.raises(BackendError, match=match) as info:
        eb.check_record(_record(), root="/b", **args)
    assert "omniad-edge build-engine /b" in str(info.value)


def test_record_format_checked(tmp_path):
    for bad in (_record(format="other"), _record(format_version=2), _record(engines={"vision": {}})):
        with pytest.raises(BackendError, match="rebuild"):
            eb.check_record(bad, trt_version="10.3.0", device=ORIN, manifest_sha="abc")
    with pytest.raises(BackendError, match="build-engine"):
        eb.read_record(tmp_path)
    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt" / "build.json").write_text("{not json")
    with pytest.raises(BackendError, match="not valid JSON"):
        eb.read_record(tmp_path)


# -- CLI --------------------------------------------------------------------------------------------------------

def _parser():
    parser = argparse.ArgumentParser(prog="omniad-edge")
    eb.add_parser(parser.add_subparsers(dest="command"))
    return parser


def test_cli_arguments_parse():
    args = _parser().parse_args(["build-engine", "B", "--fp16", "--max-image-tokens", "256", "--max-seq-len", "1024",
                                 "--batch", "2", "--workspace-gb", "1.5", "--timing-cache", "t.cache"])
    opts = eb.options_from_args(args)
    assert opts == BuildOptions(fp16=True, max_image_tokens=256, max_seq_len=1024, batch=2, workspace_gb=1.5,
                                timing_cache="t.cache")
    assert args.func is eb.main


@pytest.mark.parametrize("argv, flag", [(["--batch", "0"], "--batch"), (["--batch", "x"], "--batch"),
                                        (["--workspace-gb", "-1"], "--workspace-gb"),
                                        (["--workspace-gb", "nan"], "--workspace-gb"),
                                        (["--max-seq-len", "1.5"], "--max-seq-len")])
def test_cli_rejects_bad_numbers(argv, flag, capsys):
    with pytest.raises(SystemExit) as info:
        _parser().parse_args(["build-engine", "B", *argv])
    assert info.value.code == 2
    assert flag in capsys.readouterr().err


def write_bundle(root: Path, manifest: dict, sizes: dict[str, int]) -> Path:
    """A bundle directory with placeholder files (load_bundle checks hashes, not ONNX content)."""
    root.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, size in sizes.items():
        data = bytes(size)
        (root / name).write_bytes(data)
        files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": size}
    manifest = copy.deepcopy(manifest)
    manifest["files"] = files
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def full_manifest(**overrides) -> dict:
    m = small_manifest()
    m.update({
        "tokens": {"image_pad": 5, "vision_start": 3, "vision_end": 4, "eos": [2], "pad": 0},
        "prompt": {k: "" for k in ("template", "image", "system", "detect", "reference_intro", "query_intro")},
        "output": {"order": [], "tags": {}, "mask": {}},
        "tokenizer": {"path": "tokenizer.json"},
    })
    m["preprocess"].update(mean=[0.5] * 3, std=[0.5] * 3)
    m["embed_tokens"] = {"path": "embed_tokens.npy", "dtype": "float32", "shape": [100, 16]}
    m.update(overrides)
    return m


SIZES = {"vision.onnx": 10, "decoder.onnx": 20, "decoder.onnx.data": 30, "embed_tokens.npy": 40, "tokenizer.json": 2}


def test_cli_dry_run_prints_the_plan(tmp_path, capsys):
    root = write_bundle(tmp_path / "b", full_manifest(), SIZES)
    assert eb.main(["build-engine", str(root), "--dry-run", "--max-image-tokens", "32", "--max-seq-len", "256"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["limits"] == {"batch": 1, "max_image_tokens": 32, "max_images": 1, "max_seq_len": 256,
                              "max_prefill": 256}
    assert plan["profiles"]["vision"][0]["pixel_values"] == [[4, 1176], [128, 1176], [128, 1176]]
    assert plan["memory_estimate"]["decoder_weights"] == 50
    assert plan["strongly_typed"] == {"vision": True, "decoder": True}


def test_cli_errors_exit_2_with_the_reason(tmp_path, capsys):
    root = write_bundle(tmp_path / "b", full_manifest(), SIZES)
    assert eb.main([str(root), "--dry-run", "--max-image-tokens", "65"]) == 2
    assert "--max-image-tokens 65 exceeds" in capsys.readouterr().err
    (root / "decoder.onnx").unlink()
    assert eb.main([str(root), "--dry-run"]) == 2
    assert "missing file 'decoder.onnx'" in capsys.readouterr().err
    int8 = write_bundle(tmp_path / "q", full_manifest(precision="int8"), SIZES)
    assert eb.main([str(int8), "--dry-run"]) == 2
    assert "TensorRT cannot parse" in capsys.readouterr().err  # decoder and vision are int8


def test_cli_without_tensorrt_says_how_to_install(tmp_path, capsys):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here; this checks the message where it is not")
    root = write_bundle(tmp_path / "b", full_manifest(), SIZES)
    assert eb.main([str(root)]) == 1
    assert "pip install tensorrt" in capsys.readouterr().err
    assert not (root / "tensorrt" / "build.json").exists()


# -- orchestration against the fake TensorRT --------------------------------------------------------------------

@pytest.fixture
def toy_bundle_dir(tmp_path):
    pytest.importorskip("onnx", reason="the toy graphs are built with the onnx package")
    toy = _load_sibling("toy_graphs")
    return toy.make_toy_bundle(tmp_path / "toy")


@pytest.fixture
def fake():
    pytest.importorskip("onnx", reason="the fake TensorRT parser reads graphs with the onnx package")
    mod = _load_sibling("fake_tensorrt")
    cuda = mod.FakeCuda()
    return mod.make_fake_tensorrt(cuda), cuda


def test_build_writes_engines_and_record(toy_bundle_dir, fake, tmp_path):
    trt, cuda = fake
    lines = []
    cache = tmp_path / "timing.cache"
    opts = BuildOptions(max_image_tokens=16, max_seq_len=128, workspace_gb=0.5, timing_cache=str(cache))
    record = eb.build_engines(toy_bundle_dir, opts, log=lines.append, trt=trt, cuda=cuda)
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
    assert cache.read_bytes() == b"tt+"  # timing cache written back after both builds
    eb.build_engines(toy_bundle_dir, opts, log=lines.append, trt=trt, cuda=cuda)
    assert cache.read_bytes() == b"tt+tt+"  # and read again on the next build


def test_build_fp16_on_fp32_bundle_is_weakly_typed(toy_bundle_dir, fake):
    trt, cuda = fake
    lines = []
    record = eb.build_engines(toy_bundle_dir, BuildOptions(fp16=True, max_seq_len=128), log=lines.append, trt=trt,
                              cuda=cuda)
    vision, decoder = [details for what, details in trt.log if what == "build"]
    assert not decoder["strongly_typed"] and "FP16" in decoder["flags"]
    # the toy vision graph has no block names: the whole vision engine stays fp32
    assert "FP16" not in vision["flags"] and record["flags"]["vision_fp32_layers"] == "all"
    assert any("keeping the vision engine fp32" in line for line in lines)


def test_refusals_happen_before_any_build(toy_bundle_dir, fake):
    trt, cuda = fake
    with pytest.raises(BackendError, match="8.9"):
        eb.build_engines(toy_bundle_dir, BuildOptions(fp8=True), log=lambda _: None, trt=trt, cuda=cuda)
    with pytest.raises(BundleError, match="QuantizeLinear"):
        eb.build_engines(toy_bundle_dir, BuildOptions(int8=True), log=lambda _: None, trt=trt, cuda=cuda)
    cuda.info = DeviceInfo("Tiny", (8, 7), total_memory=64 << 20, free_memory=1 << 20)
    with pytest.raises(BackendError, match="not enough device memory"):
        eb.build_engines(toy_bundle_dir, BuildOptions(), log=lambda _: None, trt=trt, cuda=cuda)
    assert not [what for what, _ in trt.log if what == "build"]
    assert not (toy_bundle_dir / "tensorrt" / "build.json").exists()
    eb.build_engines(toy_bundle_dir, BuildOptions(max_seq_len=128, skip_memory_check=True), log=lambda _: None,
                     trt=trt, cuda=cuda)


def test_graph_that_breaks_the_contract_is_refused(toy_bundle_dir, fake):
    trt, cuda = fake
    manifest = json.loads((toy_bundle_dir / "manifest.json").read_text())
    manifest["model"]["num_layers"] = 3  # the decoder graph has 2 layers
    (toy_bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"missing inputs \['past_key.2', 'past_value.2'\]"):
        eb.build_engines(toy_bundle_dir, BuildOptions(max_seq_len=128), log=lambda _: None, trt=trt, cuda=cuda)
