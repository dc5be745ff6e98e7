"""TensorRT backend: step planning (pure), the backend's buffer/KV/graph wiring on a fake device (CPU, ONNX Runtime
underneath; see fake_tensorrt.py), engine/device matching at load, and the real thing where a GPU and TensorRT
exist."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers.tensorrt_cases import fake_tensorrt, load_sibling
from omniad_edge.tensorrt.backend import StepPlan, TensorRTBackend, expand_mask, plan_step
from omniad_edge.tensorrt.build import build_engines
from omniad_edge.tensorrt.limits import BuildOptions
from omniad_edge.errors import BackendError


# -- step planning (pure) ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, plan", [
    (dict(batch=1, seq=5, past_len=0, capacity=64), StepPlan(0, 5, True)),
    (dict(batch=1, seq=1, past_len=9, capacity=64), StepPlan(9, 10, True)),
    (dict(batch=1, seq=1, past_len=9, capacity=64, graph=True), StepPlan(64, 65, False)),
    (dict(batch=1, seq=1, past_len=0, capacity=64, graph=True), StepPlan(64, 65, False)),
    (dict(batch=2, seq=7, past_len=0, capacity=64), StepPlan(0, 7, False)),
    (dict(batch=2, seq=1, past_len=7, capacity=64), StepPlan(64, 65, False)),
    # 128-byte rows (the tiny test model): odd past lengths put new_key off the 256-byte alignment -> scratch
    (dict(batch=1, seq=1, past_len=9, capacity=64, row_bytes=128), StepPlan(9, 10, False)),
    (dict(batch=1, seq=1, past_len=10, capacity=64, row_bytes=128), StepPlan(10, 11, True)),
    (dict(batch=1, seq=1, past_len=9, capacity=64, row_bytes=1024), StepPlan(9, 10, True)),  # 3B: always aligned
])


def test_plan_step(kwargs, plan):
    assert plan_step(**kwargs) == plan


def test_plan_step_refuses_overflow():
    with pytest.raises(BackendError, match="--max-seq-len"):
        plan_step(batch=1, seq=2, past_len=63, capacity=64)


def test_expand_mask_places_past_and_new_columns():
    mask = np.array([[0, 1, 1, 1], [1, 1, 1, 1]], np.int64)  # past 3 (row 0 left-padded), 1 new
    out = expand_mask(mask, StepPlan(past_bound=6, mask_len=7, direct=False), past_len=3)
    np.testing.assert_array_equal(out, [[0, 1, 1, 0, 0, 0, 1], [1, 1, 1, 0, 0, 0, 1]])
    assert expand_mask(mask, StepPlan(3, 4, True), past_len=3) is mask


# -- the backend on a fake device -------------------------------------------------------------------------------

@pytest.fixture
def fake():
    return fake_tensorrt()


@pytest.fixture
def toy_dir(tmp_path, fake):
    trt, cuda = fake
    root = load_sibling("toy_graphs").make_toy_bundle(tmp_path / "toy")
    build_engines(root, BuildOptions(max_image_tokens=16, max_images=2, max_seq_len=32, max_prefill=16, batch=2),
                  log=lambda _: None, trt=trt, cuda=cuda)
    return root


def _backends(root, fake, **options):
    from omniad_edge.backends.onnxruntime import OnnxRuntimeBackend
    from omniad_edge.tensorrt.backend import TensorRTBackend
    from omniad_edge.bundle import load_bundle

    trt, cuda = fake
    return TensorRTBackend(root, _trt=trt, _cuda=cuda, **options), OnnxRuntimeBackend(load_bundle(root), threads=1)


def _sequence(rng, b, t, hidden=8):
    embeds = rng.standard_normal((b, t, hidden)).astype(np.float32)
    positions = np.broadcast_to(np.arange(t)[None, None, :] * 3 + 1, (3, b, t)).astype(np.int64).copy()
    return embeds, positions


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_stepwise_forward_matches_onnxruntime(toy_dir, fake, cuda_graph):
    gpu, cpu = _backends(toy_dir, fake, cuda_graph=cuda_graph)
    rng = np.random.default_rng(0)
    embeds, positions = _sequence(rng, 1, 12)
    mask = np.ones((1, 12), np.int64)
    caches = gpu.new_cache(1, 32), cpu.new_cache(1, 32)
    for past, s in [(0, 5), (5, 1), (6, 1), (7, 3), (10, 1), (11, 1)]:  # prefill, decode, forced run, decode
        args = embeds[:, past:past + s], positions[:, :, past:past + s], mask[:, :past + s]
        got = gpu.forward(*args, caches[0], past).copy()
        want = cpu.forward(*args, caches[1], past)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    _, cuda = fake
    assert (cuda.counts["launch"] > 0) == cuda_graph  # graph replays served the later decode steps
    assert gpu.cuda_graph == cuda_graph
    for i, event in enumerate(cuda.events):  # the warm-up run has finished before capture begins
        if event == "begin_capture":
            assert cuda.events[i - 2:i] == ["enqueue", "synchronize"]
    assert ("begin_capture" in cuda.events) == cuda_graph


def test_new_keys_land_at_every_offset_with_aligned_addresses(toy_dir, fake):
    """The toy cache row is 16 bytes: most past lengths put new_key off TensorRT's 256-byte alignment."""
    gpu, cpu = _backends(toy_dir, fake)
    rng = np.random.default_rng(11)
    embeds, positions = _sequence(rng, 1, 20)
    mask = np.ones((1, 20), np.int64)
    caches = gpu.new_cache(1, 32), cpu.new_cache(1, 32)
    steps = [(0, 3)] + [(p, 1) for p in range(3, 20)]
    for past, s in steps:
        args = embeds[:, past:past + s], positions[:, :, past:past + s], mask[:, :past + s]
        np.testing.assert_allclose(gpu.forward(*args, caches[0], past).copy(), cpu.forward(*args, caches[1], past),
                                   rtol=1e-5, atol=1e-5)


def test_tensorrt_runtime_errors_become_typed_errors(toy_dir, fake):
    """The bindings raise RuntimeError (set_optimization_profile_async, set_input_shape); callers get
    BackendError naming the engine and the step."""
    trt, cuda = fake
    trt.faults.add("set_optimization_profile_async")
    with pytest.raises(BackendError, match="decoder engine.*optimization profile 1"):
        _backends(toy_dir, fake)
    trt.faults.clear()
    gpu, _ = _backends(toy_dir, fake)
    embeds, positions = _sequence(np.random.default_rng(12), 1, 2)
    trt.faults.add("set_input_shape")
    with pytest.raises(BackendError, match="decoder engine.*inputs_embeds"):
        gpu.forward(embeds, positions, np.ones((1, 2), np.int64), gpu.new_cache(1, 8), 0)
    trt.faults.clear()
    trt.faults.add("execute_async_v3")
    with pytest.raises(BackendError, match="decoder engine.*execut"):
        gpu.forward(embeds, positions, np.ones((1, 2), np.int64), gpu.new_cache(1, 8), 0)


def test_on_forward_hook_counts_the_whole_forward_as_graph_time(toy_dir, fake):
    gpu, _ = _backends(toy_dir, fake)
    calls = []
    gpu.on_forward = lambda *args: calls.append(args)
    embeds, positions = _sequence(np.random.default_rng(3), 1, 4)
    cache = gpu.new_cache(1, 32)
    gpu.forward(embeds[:, :3], positions[:, :, :3], np.ones((1, 3), np.int64), cache, 0)
    gpu.forward(embeds[:, 3:], positions[:, :, 3:], np.ones((1, 4), np.int64), cache, 3)
    assert [c[0] for c in calls] == [3, 1]
    assert all(wall > 0 and graph == wall for _, wall, graph in calls)  # asynchronous run: no split inside


def test_batch_with_left_padding_matches_onnxruntime(toy_dir, fake):
    gpu, cpu = _backends(toy_dir, fake, cuda_graph=True)
    rng = np.random.default_rng(2)
    embeds, positions = _sequence(rng, 2, 9)
    mask = np.ones((2, 9), np.int64)
    mask[1, :3] = 0  # row 1 is left-padded
    caches = gpu.new_cache(2, 32), cpu.new_cache(2, 32)
    for past, s in [(0, 6), (6, 1), (7, 1), (8, 1)]:
        args = embeds[:, past:past + s], positions[:, :, past:past + s], mask[:, :past + s]
        np.testing.assert_allclose(gpu.forward(*args, caches[0], past).copy(), cpu.forward(*args, caches[1], past),
                                   rtol=1e-5, atol=1e-5)


def test_prefix_copy_matches_onnxruntime(toy_dir, fake):
    gpu, cpu = _backends(toy_dir, fake)
    rng = np.random.default_rng(3)
    prefix, positions = _sequence(rng, 1, 4)
    rest, rest_pos = _sequence(rng, 2, 3)
    rest_pos += 12
    results = []
    for backend in (gpu, cpu):
        source = backend.new_cache(1, 32)
        backend.forward(prefix, positions, np.ones((1, 4), np.int64), source, 0)
        work = backend.new_cache(2, 32)
        work.copy_prefix(source, 4)
        results.append(backend.forward(rest, rest_pos, np.ones((2, 7), np.int64), work, 4).copy())
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-5)


def test_encode_image_matches_onnxruntime(toy_dir, fake):
    gpu, cpu = _backends(toy_dir, fake)
    rng = np.random.default_rng(4)
    n = 24  # 6 merged tokens
    inputs = {"pixel_values": rng.standard_normal((n, 1176)).astype(np.float32),
              "rotary_pos_ids": np.zeros((n, 2), np.int64), "window_index": np.arange(n // 4),
              "reverse_window_index": np.arange(n // 4), "window_segments": np.zeros(n, np.int64),
              "image_segments": np.zeros(n, np.int64)}
    got = gpu.encode_image(inputs)
    np.testing.assert_allclose(got, cpu.encode_image(inputs), rtol=1e-5, atol=1e-6)
    assert got.shape == (6, 8)
    with pytest.raises(BackendError, match="up to 128"):  # 4 x 16 tokens x 2 images
        gpu.encode_image({**inputs, "pixel_values": np.zeros((132, 1176), np.float32)})
    with pytest.raises(BackendError, match="missing"):
        gpu.encode_image({"pixel_values": inputs["pixel_values"]})


def test_buffers_and_cache_slots_are_allocated_once(toy_dir, fake):
    gpu, _ = _backends(toy_dir, fake)
    _, cuda = fake
    cache = gpu.new_cache(1, 32)
    pointers = list(cache.keys)
    mallocs = cuda.counts["malloc"]
    rng = np.random.default_rng(5)
    embeds, positions = _sequence(rng, 1, 6)
    for past, s in [(0, 4), (4, 1), (5, 1)]:
        gpu.forward(embeds[:, past:past + s], positions[:, :, past:past + s], np.ones((1, past + s), np.int64),
                    cache, past)
    del cache  # its slot goes back to the pool
    again = gpu.new_cache(2, 16)
    assert list(again.keys) == pointers and cuda.counts["malloc"] == mallocs
    # toy model: 2 layers x (K + V) x batch 2 x 32 positions x 1 head x 4 dims x 4 bytes
    assert gpu.memory_report()["kv_cache"] == 2 * 2 * 2 * 32 * 4 * 4
    assert gpu.device_memory_bytes == sum(gpu.memory_report().values())
    assert gpu.describe()["limits"]["max_seq_len"] == 32


def test_bad_calls_are_typed_errors(toy_dir, fake):
    gpu, cpu = _backends(toy_dir, fake)
    with pytest.raises(BackendError, match="--batch"):
        gpu.new_cache(3, 8)
    with pytest.raises(BackendError, match="--max-seq-len"):
        gpu.new_cache(1, 33)
    embeds, positions = _sequence(np.random.default_rng(6), 1, 2)
    with pytest.raises(BackendError, match="new_cache"):
        gpu.forward(embeds, positions, np.ones((1, 2), np.int64), cpu.new_cache(1, 8), 0)
    cache = gpu.new_cache(1, 8)
    with pytest.raises(BackendError, match="KV cache full"):
        gpu.forward(embeds, positions, np.ones((1, 9), np.int64), cache, 7)
    with pytest.raises(BackendError, match="attention_mask"):
        gpu.forward(embeds, positions, np.ones((1, 3), np.int64), cache, 0)
    with pytest.raises(BackendError, match="device"):
        _backends(toy_dir, fake, device=-1)


def test_engines_from_elsewhere_are_refused(toy_dir, fake):
    from omniad_edge.tensorrt.backend import TensorRTBackend

    mod = load_sibling("fake_tensorrt")
    trt, cuda = fake
    with pytest.raises(BackendError, match="TensorRT 10.3.0.*TensorRT 10.4.0.*build-engine"):
        TensorRTBackend(toy_dir, _trt=mod.make_fake_tensorrt(cuda, version="10.4.0"), _cuda=cuda)
    other = mod.FakeCuda(name="NVIDIA L4", cc=(8, 9), integrated=False)
    with pytest.raises(BackendError, match="built for Fake Orin.*NVIDIA L4"):
        TensorRTBackend(toy_dir, _trt=trt, _cuda=other)
    engine = toy_dir / "tensorrt" / "decoder.engine"
    record = json.loads(engine.read_bytes())
    record["flags"].append("FP16")
    engine.write_bytes(json.dumps(record).encode())
    with pytest.raises(BackendError, match="sha256"):
        TensorRTBackend(toy_dir, _trt=trt, _cuda=cuda)
    (toy_dir / "tensorrt" / "build.json").unlink()
    with pytest.raises(BackendError, match="build-engine"):
        TensorRTBackend(toy_dir, _trt=trt, _cuda=cuda)


def test_factory(toy_dir, fake):
    from omniad_edge.backends import create_backend
    from omniad_edge.bundle import load_bundle

    trt, cuda = fake
    bundle = load_bundle(toy_dir)
    # the keywords the Inspector passes to every backend
    backend = create_backend(bundle, "tensorrt", providers=None, threads=2, allow_fallback=False,
                             optimization="all", _trt=trt, _cuda=cuda, cuda_graph=True)
    assert backend.name == "tensorrt" and "Fake Orin" in backend.provider
    backend.close()
    assert not cuda.buffers  # every device and pinned allocation returned
    with pytest.raises(BackendError, match="providers"):
        create_backend(bundle, "tensorrt", providers=["cuda"], _trt=trt, _cuda=cuda)


# -- the real tiny Qwen2.5-VL graphs -----------------------------------------------------------------------------

def _greedy(backend, bundle, ids, steps):
    table = np.asarray(bundle.embed_tokens())
    n = len(ids)
    cache = backend.new_cache(1, n + steps)
    positions = np.broadcast_to(np.arange(n, dtype=np.int64), (3, 1, n)).copy()
    logits = backend.forward(table[ids][None], positions, np.ones((1, n), np.int64), cache, 0)
    tokens = []
    for t in range(steps):
        tokens.append(int(np.argmax(logits[0])))
        pos = np.full((3, 1, 1), n + t, np.int64)
        logits = backend.forward(table[tokens[-1:]][None], pos, np.ones((1, n + t + 1), np.int64), cache, n + t)
    return tokens, logits[0].copy()


@pytest.fixture
def tiny_copy(request, tmp_path):
    """A private copy of the tiny exported bundle (the engines are written into it)."""
    try:
        source = request.getfixturevalue("tiny_bundle_plain")
    except pytest.FixtureLookupError:
        pytest.skip("the tiny_bundle_plain fixture (tests/conftest.py) is not available")
    return Path(shutil.copytree(source, tmp_path / "tiny"))


def test_a_bundle_exported_for_onnx_runtime_is_refused_before_tensorrt_loads(tiny_bundle):
    """An export --target ort bundle: a typed error naming the fix, without TensorRT, CUDA or engines."""
    from omniad_edge.errors import BundleError

    with pytest.raises(BundleError, match="exported for target 'ort'.*--target tensorrt"):
        TensorRTBackend(tiny_bundle, _trt=object(), _cuda=object())


@pytest.mark.slow
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_tiny_model_tokens_on_fake_device(tiny_copy, fake, cuda_graph):
    """The real decoder's attention with the whole-cache (masked) binding gives ONNX Runtime's tokens."""
    from omniad_edge.bundle import load_bundle

    trt, cuda = fake
    build_engines(tiny_copy, BuildOptions(max_image_tokens=16, max_seq_len=64), log=lambda _: None, trt=trt,
                  cuda=cuda)
    gpu, cpu = _backends(tiny_copy, fake, cuda_graph=cuda_graph)
    bundle = load_bundle(tiny_copy)
    ids = np.random.default_rng(7).integers(10, int(bundle.model["vocab_size"]) - 10, 12)
    got, got_logits = _greedy(gpu, bundle, ids, 8)
    want, want_logits = _greedy(cpu, bundle, ids, 8)
    assert got == want
    np.testing.assert_allclose(got_logits, want_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_inspector_on_fake_device_matches_onnxruntime(tiny_copy, fake):
    """The whole Inspector (prompt, prefix cache, generate loop, mask decoding) on the TensorRT backend."""
    pytest.importorskip("omniad_edge._native", reason="the Inspector needs the compiled sampler")
    from omniad_edge import Inspector

    trt, cuda = fake
    build_engines(tiny_copy, BuildOptions(max_image_tokens=64, max_seq_len=512), log=lambda _: None, trt=trt,
                  cuda=cuda)
    frame = np.random.default_rng(10).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    results = []
    for backend, options in (("onnxruntime", {}), ("tensorrt", {"_trt": trt, "_cuda": cuda, "cuda_graph": True})):
        inspector = Inspector(tiny_copy, backend=backend, backend_options=options, max_new_tokens=24, threads=1)
        results.append([inspector.run(frame).text, inspector.run(frame).text])  # second run: cached prefix
    assert results[0] == results[1]


def test_speculative_decoding_on_fake_device_writes_onnxruntimes_text(tiny_copy, fake, monkeypatch):
    """Drafts checked through the engine's draft_logits output (copied back from the device for multi-token runs):
    an oracle's drafts are all confirmed, a liar's all refused, and the text is ONNX Runtime's plain decoding's."""
    pytest.importorskip("omniad_edge._native", reason="the Inspector needs the compiled sampler")
    from omniad_edge import Inspector
    from helpers.drafters import oracle_and_liar, record_generations

    trt, cuda = fake
    build_engines(tiny_copy, BuildOptions(max_image_tokens=64, max_seq_len=512), log=lambda _: None, trt=trt,
                  cuda=cuda)
    frame = np.random.default_rng(11).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    plain = Inspector(tiny_copy, mode="explain", max_new_tokens=24, threads=1)
    ids, text = plain.generate(frame, "Inspect the part.")
    spec = Inspector(tiny_copy, mode="explain", backend="tensorrt", max_new_tokens=24, speculative=True,
                     backend_options={"_trt": trt, "_cuda": cuda, "cuda_graph": True})
    assert spec.backend.draft_positions == 15 and spec.options["speculative"]

    seen = record_generations(monkeypatch)
    for drafter in oracle_and_liar(ids):
        spec.generator.drafter = drafter
        assert spec.generate(frame, "Inspect the part.") == (ids, text)
    confirmed, refused = seen
    assert confirmed.accepted_drafts == confirmed.drafted_tokens > 0 and confirmed.forwards < refused.forwards
    assert refused.accepted_drafts == 0 and refused.drafted_tokens > 0


def _gpu_reason() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (needs an NVIDIA GPU machine: pip install tensorrt, or JetPack)"
    try:
        from omniad_edge.tensorrt.cuda import load_cuda

        load_cuda().device_info(0)
    except BackendError as exc:
        return f"no CUDA device: {exc}"
    return None


@pytest.mark.slow
def test_tiny_model_on_gpu_matches_onnxruntime_cpu(tiny_copy):
    reason = _gpu_reason()
    if reason:
        pytest.skip(reason)
    from omniad_edge.backends.onnxruntime import OnnxRuntimeBackend
    from omniad_edge.tensorrt.backend import TensorRTBackend
    from omniad_edge.bundle import load_bundle
    from omniad_edge.preprocess import concat_images, preprocess_image

    build_engines(tiny_copy, BuildOptions(max_image_tokens=64, max_seq_len=256), log=print)
    bundle = load_bundle(tiny_copy)
    cpu = OnnxRuntimeBackend(bundle, threads=2)
    for cuda_graph in (False, True):
        gpu = TensorRTBackend(bundle, cuda_graph=cuda_graph)
        print(gpu.describe())
        ids = np.random.default_rng(8).integers(10, int(bundle.model["vocab_size"]) - 10, 20)
        assert _greedy(gpu, bundle, ids, 16)[0] == _greedy(cpu, bundle, ids, 16)[0]
        frame = np.random.default_rng(9).integers(0, 256, (100, 140, 3), dtype=np.uint8)
        vision = bundle.model["vision"]
        inputs = concat_images([preprocess_image(frame, bundle.preprocess)], vision["spatial_merge_size"],
                               vision["window_size"], vision["patch_size"])
        np.testing.assert_allclose(gpu.encode_image(inputs), cpu.encode_image(inputs), rtol=1e-3, atol=1e-3)
        gpu.close()
