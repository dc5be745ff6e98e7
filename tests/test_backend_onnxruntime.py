"""ONNX Runtime backend on toy graphs: IO binding into the KV cache, batch, providers, errors; the Python session
path and the native decode step (C API) alike."""
import numpy as np
import pytest

pytest.importorskip("onnx", reason="the toy graphs are built with the onnx package")

from omniad_edge.backends import KVCache, create_backend  # noqa: E402
from omniad_edge.backends.onnxruntime import OnnxRuntimeBackend, resolve_providers  # noqa: E402
from omniad_edge.bundle import load_bundle  # noqa: E402
from omniad_edge.errors import BackendError  # noqa: E402
from toy_graphs import make_toy_bundle, toy_decoder_reference  # noqa: E402


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return load_bundle(make_toy_bundle(tmp_path_factory.mktemp("toy")))


@pytest.fixture(scope="module", params=[False, True], ids=["python", "native"])
def backend(toy, request):
    backend = OnnxRuntimeBackend(toy, threads=1, native=request.param)
    assert backend.describe()["decode_step"] == ("native" if request.param else "Python")
    return backend


def _random_sequence(rng, b, t, hidden=8):
    embeds = rng.standard_normal((b, t, hidden)).astype(np.float32)
    positions = np.broadcast_to(np.arange(t)[None, None, :] * 3 + 1, (3, b, t)).astype(np.int64).copy()
    return embeds, positions


def test_stepwise_forward_matches_reference(backend):
    rng = np.random.default_rng(0)
    embeds, positions = _random_sequence(rng, 1, 9)
    mask = np.ones((1, 9), np.int64)
    cache = backend.new_cache(1, 16)
    steps = [(0, 5), (5, 1), (6, 1), (7, 2)]  # a prefill then decode steps, then a two-token forced run
    for past, s in steps:
        logits = backend.forward(embeds[:, past:past + s], positions[:, :, past:past + s], mask[:, :past + s],
                                 cache, past)
        expected = toy_decoder_reference(embeds[:, :past + s], positions[:, :, :past + s], mask[:, :past + s])
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    # the cache holds exactly the keys of every token, in order
    from toy_graphs import _rng_weights
    wk, _, _, _ = _rng_weights(0, 2, 8, 4, 32)
    np.testing.assert_allclose(cache.keys[1][0, :9].reshape(9, 4), embeds[0] @ wk[1], rtol=1e-5, atol=1e-5)
    assert not cache.keys[0][:, 9:].any()


def test_logits_buffer_reused_and_cache_not_reallocated(backend):
    rng = np.random.default_rng(1)
    embeds, positions = _random_sequence(rng, 1, 4)
    cache = backend.new_cache(1, 8)
    buffers = [k.ctypes.data for k in cache.keys]
    first = backend.forward(embeds[:, :3], positions[:, :, :3], np.ones((1, 3), np.int64), cache, 0)
    second = backend.forward(embeds[:, 3:], positions[:, :, 3:], np.ones((1, 4), np.int64), cache, 3)
    assert first is second  # one logits buffer per batch size
    assert [k.ctypes.data for k in cache.keys] == buffers


@pytest.mark.parametrize("native", [False, True])
def test_on_forward_hook_reports_tokens_and_times(toy, native):
    backend = OnnxRuntimeBackend(toy, threads=1, native=native)
    calls = []
    backend.on_forward = lambda *args: calls.append(args)
    rng = np.random.default_rng(5)
    embeds, positions = _random_sequence(rng, 1, 4)
    cache = backend.new_cache(1, 8)
    backend.forward(embeds[:, :3], positions[:, :, :3], np.ones((1, 3), np.int64), cache, 0)
    backend.forward(embeds[:, 3:], positions[:, :, 3:], np.ones((1, 4), np.int64), cache, 3)
    assert [c[0] for c in calls] == [3, 1]
    assert all(0.0 < graph <= wall for _, wall, graph in calls)  # the session run is part of the forward


def test_batch_with_left_padding_matches_rows(backend):
    rng = np.random.default_rng(2)
    lengths = [5, 3]
    width = max(lengths)
    embeds = np.zeros((2, width + 2, 8), np.float32)
    positions = np.zeros((3, 2, width + 2), np.int64)
    mask = np.zeros((2, width + 2), np.int64)
    rows = []
    for b, n in enumerate(lengths):
        e, p = _random_sequence(rng, 1, n + 2)
        rows.append((e, p))
        embeds[b, width - n:] = e[0]
        positions[:, b, width - n:] = p[:, 0]
        mask[b, width - n:] = 1
    cache = backend.new_cache(2, width + 2)
    backend.forward(embeds[:, :width], positions[:, :, :width], mask[:, :width], cache, 0)
    logits = None
    for t in range(width, width + 2):
        logits = backend.forward(embeds[:, t:t + 1], positions[:, :, t:t + 1], mask[:, :t + 1], cache, t).copy()
    for b, (e, p) in enumerate(rows):
        expected = toy_decoder_reference(e, p, np.ones((1, e.shape[1]), np.int64))
        np.testing.assert_allclose(logits[b:b + 1], expected, rtol=1e-4, atol=1e-4)


def _steps(backend, batch, seed):
    """A prefill, decode steps and a two-token run; -> (logits of every forward, the cache)."""
    rng = np.random.default_rng(seed)
    embeds, positions = _random_sequence(rng, batch, 9)
    mask = np.ones((batch, 9), np.int64)
    cache = backend.new_cache(batch, 12)
    out = [backend.forward(embeds[:, p:p + s], positions[:, :, p:p + s], mask[:, :p + s], cache, p).copy()
           for p, s in [(0, 5), (5, 1), (6, 1), (7, 2)]]
    return out, cache


@pytest.mark.parametrize("batch", [1, 2])
def test_public_binding_api_gives_identical_results(toy, batch):
    """The fast binding (onnxruntime's pybind IOBinding, a device built once) and the public-API fallback it drops
    to when onnxruntime changes must bind the same tensors: same logits and cache, bit for bit."""
    fast, public = OnnxRuntimeBackend(toy, threads=1, native=False), OnnxRuntimeBackend(toy, threads=1, native=False)
    public._fast_binding = False
    (got, got_cache), (want, want_cache) = _steps(fast, batch, 3), _steps(public, batch, 3)
    assert want_cache.backend_state.device is None and got_cache.backend_state.device is not None
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(got_cache.keys + got_cache.values, want_cache.keys + want_cache.values):
        np.testing.assert_array_equal(a, b)


def test_binding_falls_back_to_the_public_api_when_onnxruntime_internals_change(toy):
    import onnxruntime

    from omniad_edge.backends.onnxruntime import _binders

    class PublicOnly:  # an IOBinding without the private layer the fast path uses
        def __init__(self, io):
            self.calls, self._io = [], io

        def bind_input(self, *args):
            self.calls.append(args[:4])
            self._io.bind_input(*args)

    io = OnnxRuntimeBackend(toy, threads=1, native=False).decoder.io_binding()
    public = PublicOnly(io)
    bind_input, _, device = _binders(onnxruntime, public)
    assert device is None
    values = np.zeros((1, 2), np.int64)
    bind_input("attention_mask", device, 7, [1, 2], values.ctypes.data)
    assert public.calls == [("attention_mask", "cpu", 0, 7)]


@pytest.mark.parametrize("batch", [1, 2])
def test_native_step_gives_the_python_sessions_results(toy, batch):
    """The C API session with the native binding description computes what the Python session does: same logits
    and cache, bit for bit (batch 2: the strided past gathered, the new entries scattered into their slots)."""
    (got, got_cache), (want, want_cache) = [_steps(OnnxRuntimeBackend(toy, threads=1, native=native), batch, 6)
                                            for native in (True, False)]
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(got_cache.keys + got_cache.values, want_cache.keys + want_cache.values):
        np.testing.assert_array_equal(a, b)


def test_spinning_reaches_every_session_and_changes_no_result(toy, monkeypatch):
    """spinning=True is set on the Python decoder session's options, with the spinning stopped when a run returns,
    and handed to the native session, never on the vision session; the numbers are the same as with spinning off (it
    changes how threads wait, not what they compute)."""
    from omniad_edge.backends import onnxruntime as module
    made = []
    real = module._native_module().OrtSession

    def recording(*args):
        made.append(args)
        return real(*args)

    monkeypatch.setattr(module._native_module(), "OrtSession", recording)
    runs = {}
    for spinning in (False, True):
        backend = OnnxRuntimeBackend(toy, threads=2, native=True, spinning=spinning)
        entry = backend.session_options.get_session_config_entry("session.intra_op.allow_spinning")
        assert (backend.spinning, entry) == (spinning, "1" if spinning else "0")
        python = OnnxRuntimeBackend(toy, threads=2, native=False, spinning=spinning)
        for session, flag in ((python.vision, "0"), (python.decoder, "1" if spinning else "0")):
            options = session.get_session_options()
            for key in ("session.intra_op.allow_spinning", "session.force_spinning_stop"):
                assert options.get_session_config_entry(key) == flag, (session, key)
        assert made[-1][-1] is spinning  # the native session's spinning argument
        runs[spinning] = _steps(backend, 1, 6)
    (got, got_cache), (want, want_cache) = runs[True], runs[False]
    for a, b in zip(got + got_cache.keys, want + want_cache.keys):
        np.testing.assert_array_equal(a, b)


def test_native_step_unavailable_falls_back_or_is_refused(toy, monkeypatch, caplog):
    from omniad_edge.backends import onnxruntime as module

    monkeypatch.setattr(module, "onnxruntime_library", lambda ort: [])
    with pytest.raises(BackendError, match="native decode step is not available: no library exporting the C API"):
        OnnxRuntimeBackend(toy, threads=1, native=True)
    backend = OnnxRuntimeBackend(toy, threads=1)
    assert backend.describe()["decode_step"] == "Python" and backend.native_step(backend.new_cache(1, 4)) is None
    assert "the decode loop runs in Python" in caplog.text
    monkeypatch.setattr(module, "_native_module", lambda: object())  # a module built before the native step
    with pytest.raises(BackendError, match="built without it"):
        OnnxRuntimeBackend(toy, threads=1, native=True)


def test_a_new_cache_gets_its_own_addresses(backend):
    """Bind addresses are kept per cache object; a cache freed and replaced must not leave stale ones behind."""
    import gc

    reference, _ = _steps(backend, 1, 4)
    for _ in range(3):
        _steps(backend, 1, 5)  # caches created and dropped
        gc.collect()
        got, cache = _steps(backend, 1, 4)
        for a, b in zip(got, reference):
            np.testing.assert_array_equal(a, b)
        assert cache.keys[0][:, :9].any() and not cache.keys[0][:, 9:].any()


@pytest.mark.parametrize("batch", [1, 2])
def test_forwards_on_separate_caches_run_concurrently_with_serial_results(backend, batch):
    # binding, logits buffer and addresses live with each cache: threads sharing the sessions do not mix them
    from concurrent.futures import ThreadPoolExecutor

    serial = [_steps(backend, batch, seed)[0] for seed in range(8)]
    for _ in range(3):
        with ThreadPoolExecutor(8) as pool:
            parallel = list(pool.map(lambda seed: _steps(backend, batch, seed)[0], range(8)))
        for want, got in zip(serial, parallel):
            for a, b in zip(want, got):
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("native", [False, True])
def test_close_releases_the_sessions(toy, native):
    backend = OnnxRuntimeBackend(toy, threads=1, native=native)
    cache = backend.new_cache(1, 4)
    backend.forward(np.zeros((1, 1, 8), np.float32), np.zeros((3, 1, 1), np.int64), np.ones((1, 1), np.int64), cache, 0)
    backend.close()
    assert backend.decoder is None and backend.vision is None and backend.native is None
    with pytest.raises(BackendError, match="closed"):  # also on a cache bound before the close
        backend.forward(np.zeros((1, 1, 8), np.float32), np.zeros((3, 1, 1), np.int64), np.ones((1, 2), np.int64),
                        cache, 1)
    with pytest.raises(BackendError, match="closed"):
        backend.encode_image({})


def test_cache_overflow_and_batch_mismatch_are_typed(backend):
    cache = backend.new_cache(1, 4)
    e = np.zeros((1, 5, 8), np.float32)
    with pytest.raises(BackendError, match="KV cache full"):
        backend.forward(e, np.zeros((3, 1, 5), np.int64), np.ones((1, 5), np.int64), cache, 0)
    with pytest.raises(BackendError, match="batch"):
        backend.forward(np.zeros((2, 1, 8), np.float32), np.zeros((3, 2, 1), np.int64), np.ones((2, 1), np.int64),
                        cache, 0)


@pytest.mark.parametrize("layout", ["BSHD", "BNSH"])
def test_copy_prefix_broadcasts_row(layout):
    src = KVCache(2, 1, 6, 2, 4, layout=layout)
    for a in src.keys + src.values:
        a[...] = np.arange(a.size, dtype=np.float32).reshape(a.shape)
    dst = KVCache(2, 3, 8, 2, 4, layout=layout)
    dst.copy_prefix(src, 4)
    seq = 1 if layout == "BSHD" else 2  # the slot axis
    for d, s in zip(dst.keys + dst.values, src.keys + src.values):
        for b in range(3):
            np.testing.assert_array_equal(d[b].take(range(4), seq - 1), s[0].take(range(4), seq - 1))
        assert not d.take(range(4, 8), seq).any()


def test_copy_prefix_refuses_a_cache_of_another_layout():
    with pytest.raises(ValueError, match="source cache is BSHD"):
        KVCache(2, 1, 8, 2, 4, layout="BNSH").copy_prefix(KVCache(2, 1, 8, 2, 4), 2)


def test_vision_encoder_runs(backend):
    pixels = np.random.default_rng(3).standard_normal((16, 1176)).astype(np.float32)
    idx = {n: np.zeros(16 if n.endswith("segments") else 4, np.int64)
           for n in ("window_index", "reverse_window_index", "window_segments", "image_segments")}
    out = backend.encode_image({"pixel_values": pixels, "rotary_pos_ids": np.zeros((16, 2), np.int64), **idx})
    assert out.shape == (4, 8)
    with pytest.raises(BackendError, match="missing"):
        backend.encode_image({"pixel_values": pixels})


def test_provider_is_reported_and_missing_provider_refused(toy):
    backend = create_backend(toy, threads=1)
    assert backend.provider == "CPUExecutionProvider"
    assert backend.describe()["provider"] == "CPUExecutionProvider"
    with pytest.raises(BackendError, match="TensorrtExecutionProvider is not available"):
        resolve_providers(["tensorrt"], available=["CPUExecutionProvider"], allow_fallback=False)
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(BackendError, match="CUDAExecutionProvider is not available"):
            OnnxRuntimeBackend(toy, providers=["cuda"])


def test_fallback_only_when_allowed(caplog):
    with caplog.at_level("WARNING", logger="omniad_edge"):
        resolved = resolve_providers(["cuda"], available=["CPUExecutionProvider"], allow_fallback=True)
    assert resolved == [("CPUExecutionProvider", {})]
    assert "falling back" in caplog.text


def test_tensorrt_provider_options():
    resolved = resolve_providers(["tensorrt", "cuda"], available=["TensorrtExecutionProvider",
                                 "CUDAExecutionProvider", "CPUExecutionProvider"], allow_fallback=False,
                                 cache_dir=None, fp16=True)
    assert [r[0] for r in resolved] == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolved[0][1]["trt_fp16_enable"] is True


def test_bad_options_are_typed(toy):
    with pytest.raises(BackendError, match="threads"):
        OnnxRuntimeBackend(toy, threads=-1)
    with pytest.raises(BackendError, match="optimization"):
        OnnxRuntimeBackend(toy, optimization="max")
    with pytest.raises(BackendError, match="spinning must be True or False, got 'yes'"):
        OnnxRuntimeBackend(toy, spinning="yes")
    with pytest.raises(BackendError, match="backend must be"):
        create_backend(toy, backend="openvino")


def test_onnxruntime_older_than_the_floor_is_refused():
    from omniad_edge.backends.onnxruntime import MIN_ONNXRUNTIME, check_version

    assert MIN_ONNXRUNTIME == (1, 20)
    for ok in ("1.20.0", "1.20.1", "1.32.0", "2.0.0", "1.21.0.dev20250101"):
        check_version(ok)
    for old in ("1.19.2", "1.9.0", "0.5"):
        with pytest.raises(BackendError, match=r"too old.*>= 1\.20"):
            check_version(old)


@pytest.mark.parametrize("op, domain, min_ort, fix", [
    ("NoSuchFusedAttention", "com.microsoft", None, r">= 1\.20, or re-export the bundle with --target tensorrt"),
    # an ONNX Runtime older than 1.29 lacks the decoder's MRotaryEmbedding (stood in for by a domain it lacks)
    ("MRotaryEmbedding", "com.microsoft.absent", "1.29",
     r">= 1\.29, or re-export the bundle with --decoder-rotary computed .*or --target tensorrt"),
])
def test_a_runtime_without_the_graph_s_contrib_op_gets_a_clear_error(tmp_path, op, domain, min_ort, fix):
    """A graph using a com.microsoft operator this ONNX Runtime build lacks: the error names the op and the fix."""
    import json

    import onnx
    from onnx import helper

    from toy_graphs import write_manifest

    root = make_toy_bundle(tmp_path / "toy")
    model = onnx.load(str(root / "decoder.onnx"))
    node = model.graph.node[0]  # an op this build lacks, in front of the first node
    model.graph.node.insert(0, helper.make_node(op, [node.input[0]], ["unused_fused"], domain=domain))
    model.opset_import.append(helper.make_opsetid(domain, 1))
    onnx.save(model, str(root / "decoder.onnx"))
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["target"] = "ort"
    manifest["graphs"]["decoder"]["contrib_ops"] = [op]
    if min_ort:
        manifest["graphs"]["decoder"]["min_onnxruntime"] = min_ort
    write_manifest(root, manifest)
    with pytest.raises(BackendError, match=rf"lacks the contrib operator\(s\) \['{op}'\].*{fix}"):
        OnnxRuntimeBackend(load_bundle(root), threads=1)


def test_a_cache_of_the_other_layout_is_refused(backend):
    from omniad_edge.backends import KVCache

    foreign = KVCache(backend.num_layers, 1, 8, backend.kv_heads, backend.head_dim, layout="BNSH")
    with pytest.raises(BackendError, match="layout BNSH does not match"):
        backend.forward(np.zeros((1, 1, backend.hidden_size), np.float32), np.zeros((3, 1, 1), np.int64),
                        np.ones((1, 1), np.int64), foreign, 0)


def test_native_step_binds_a_whole_buffer_shared_by_past_and_present(tmp_path):
    """The binding description is generic: a BNSH-style cache (the fused decoder's contract) bound whole, with
    constant dims, as both the past input and the present output at one address, updated in place by the graph
    (a toy graph: present = past + 1, logits = mean(embeds) @ W), batch 1 and 2, no copies."""
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    from omniad_edge import _native
    from omniad_edge.backends.onnxruntime import onnxruntime_library

    hidden, kv, slots, hd, vocab = 4, 2, 6, 3, 5
    w = np.arange(hidden * vocab, dtype=np.float32).reshape(hidden, vocab) / 10
    cache_shape = ["B", kv, slots, hd]
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["inputs_embeds", "axis"], ["pooled"], keepdims=0),
         helper.make_node("MatMul", ["pooled", "W"], ["logits"]),
         helper.make_node("Add", ["past_key.0", "one"], ["present_key.0"])],
        "shared_cache",
        [helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT, ["B", "S", hidden]),
         helper.make_tensor_value_info("position_ids", TensorProto.INT64, [3, "B", "S"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["B", "T"]),
         helper.make_tensor_value_info("past_key.0", TensorProto.FLOAT, cache_shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", vocab]),
         helper.make_tensor_value_info("present_key.0", TensorProto.FLOAT, cache_shape)],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array([1], np.int64), "axis"),
         numpy_helper.from_array(np.ones(1, np.float32), "one")])
    path = tmp_path / "shared.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    session = _native.OrtSession(str(onnxruntime_library(onnxruntime)[0]), str(path), 1, 99, True)
    for batch in (1, 2):
        buf = np.zeros((batch, kv, slots, hd), np.float32)
        whole = [-1, kv, slots, hd]
        tensors = [(name, output, whole, buf.ctypes.data, buf.strides[0], 0, False)
                   for name, output in (("past_key.0", False), ("present_key.0", True))]
        step = _native.DecodeStep(session, batch, vocab, slots, tensors,
                                  ["inputs_embeds", "position_ids", "attention_mask", "logits"])
        rng = np.random.default_rng(batch)
        for past, s in ((0, 3), (3, 1)):
            embeds = rng.standard_normal((batch, s, hidden)).astype(np.float32)
            step.run(embeds, np.zeros((3, batch, s), np.int64), np.ones((batch, past + s), np.int64), past)
            np.testing.assert_allclose(step.logits, embeds.mean(axis=1) @ w, rtol=1e-5)
        assert (buf == 2).all()  # two runs, each adding one in place
        # one-token feeds bind the step's kept handles (the whole buffer once, the mask once per length): two
        # sequences over the same lengths, the second only looking its handles up, still read the new inputs
        table = rng.standard_normal((7, hidden)).astype(np.float32)
        for sequence in range(2):
            mask = np.ones((batch, slots), np.int64)
            next_pos = np.full(batch, 4, np.int64)
            for length in (4, 5):
                ids = rng.integers(0, 7, (batch, 1))
                mask[:, length:] = 0
                step.feed(table, ids, next_pos, mask, length)
                np.testing.assert_allclose(step.logits, table[ids[:, 0]] @ w, rtol=1e-5)
                assert (mask[:, :length + 1] == 1).all() and (next_pos == length + 1).all()
        assert (buf == 6).all()  # and four feeds more, in place


@pytest.mark.parametrize("batch", [1, 2])
def test_fused_decoder_binds_the_same_way_on_every_path(tiny_bundle, batch):
    """The fused decoder (export --target ort: one BNSH buffer per layer bound as past and present, once per cache)
    through the native step, the fast Python binding and the public-API binding: the same logits and cache, bit for
    bit, over a left-padded prefill, decode steps and a two-token step."""
    bundle = load_bundle(tiny_bundle)
    native, fast, public = (OnnxRuntimeBackend(bundle, threads=1, native=n) for n in (True, False, False))
    public._fast_binding = False
    assert native.kv_layout == "BNSH" and native.describe()["decode_step"] == "native"
    rng = np.random.default_rng(batch)
    hidden = bundle.model["hidden_size"]
    embeds = rng.standard_normal((batch, 9, hidden)).astype(np.float32)
    positions = np.broadcast_to(np.arange(9), (3, batch, 9)).copy()
    positions[1:, :, 2:5] += 7  # an image's rows and columns on two of the mrope axes
    mask = np.ones((batch, 9), np.int64)
    mask[-1, :2] = 0  # the last row left-padded
    runs = []
    for backend in (native, fast, public):
        cache = backend.new_cache(batch, 12)
        logits = [backend.forward(embeds[:, p:p + s], positions[:, :, p:p + s], mask[:, :p + s], cache, p).copy()
                  for p, s in [(0, 5), (5, 1), (6, 1), (7, 2)]]
        runs.append((logits, cache))
    (want, want_cache), *others = runs
    assert all(np.isfinite(x).all() for x in want)
    for got, got_cache in others:
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(got_cache.keys + got_cache.values, want_cache.keys + want_cache.values):
            np.testing.assert_array_equal(a[..., :9, :], b[..., :9, :])
            assert not a[..., 9:, :].any()  # slots past the sequence untouched


def test_a_fused_decoder_on_cuda_warns_that_its_attention_runs_on_the_cpu(tiny_bundle, tiny_bundle_plain,
                                                                          monkeypatch, caplog):
    """GroupQueryAttention has no float32 CUDA kernel: the user learns it, with the fix, at load time."""
    real = OnnxRuntimeBackend._session

    class OnCuda:  # the decoder session as ONNX Runtime reports it when CUDA took the graph
        def __init__(self, session):
            self._session = session

        def __getattr__(self, name):
            return getattr(self._session, name)

        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    monkeypatch.setattr(OnnxRuntimeBackend, "_session",
                        lambda self, path, what, options=None: OnCuda(real(self, path, what, options))
                        if what == "decoder" else real(self, path, what, options))
    OnnxRuntimeBackend(load_bundle(tiny_bundle_plain), threads=1, native=False)
    assert "GroupQueryAttention" not in caplog.text
    OnnxRuntimeBackend(load_bundle(tiny_bundle), threads=1, native=False)
    assert "runs on the CPU beside CUDA" in caplog.text and "--target tensorrt" in caplog.text
