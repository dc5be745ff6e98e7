"""One Inspector shared by many threads gives exactly the serial results (omniad_edge.inspector, generate, backends).

8 threads x mixed frame sizes x both modes x a reference prefix, on a tiny exported bundle and on the embedded default
bundle; every result is compared field by field with the same call made alone, before any thread started.
"""
from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from helpers.frames import make_frame

pytest.importorskip("omniad_edge._native", reason="the native sampler/codec module is not built "
                    "(python setup.py build_ext --inplace)")

THREADS = 8


def _key(inspection):
    return (inspection.text, inspection.score, inspection.anomaly_probability, inspection.finish_reason,
            inspection.generated_tokens,
            inspection.prompt_tokens, inspection.options["prefix_tokens"], inspection.mask.tobytes(),
            [(b.x0, b.y0, b.x1, b.y1, b.label) for b in inspection.boxes])


def _tasks(inspectors, frames):
    """(inspector name, 'run' | 'batch', frame indices): every frame through run, pairs through run_batch."""
    tasks = []
    for name in inspectors:
        tasks += [(name, "run", (i,)) for i in range(len(frames))]
        tasks += [(name, "batch", (i, (i + 1) % len(frames))) for i in range(0, len(frames), 2)]
    return tasks


def _call(inspectors, frames, task):
    name, how, indices = task
    ins = inspectors[name]
    if how == "run":
        return [_key(ins.run(frames[indices[0]]))]
    return [_key(r) for r in ins.run_batch([frames[i] for i in indices])]


def _check_threads_match_serial(inspectors, frames, repeats=3):
    tasks = _tasks(inspectors, frames)
    serial = {task: _call(inspectors, frames, task) for task in tasks}
    shuffled = tasks * repeats
    random.Random(0).shuffle(shuffled)
    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(lambda task: (task, _call(inspectors, frames, task)), shuffled))
    wrong = [task for task, got in results if got != serial[task]]
    assert not wrong, f"{len(wrong)} of {len(results)} threaded calls differ from serial: {wrong[:4]}"
    return serial


def test_tiny_bundle_threads_match_serial(tiny_bundle):
    from omniad_edge import Inspector

    reference = make_frame(64, 80, seed=99)
    inspectors = {
        "detect": Inspector(tiny_bundle, mode="detect", threads=1, max_new_tokens=24, reference=[reference]),
        "explain": Inspector(tiny_bundle, mode="explain", threads=1, max_new_tokens=40, reference=[reference]),
        "no-reference": Inspector(tiny_bundle, mode="detect", threads=1, max_new_tokens=24),
        # sampling: each call draws from a generator started at the seed, whatever else runs
        "sampled": Inspector(tiny_bundle, mode="explain", threads=1, max_new_tokens=32, temperature=0.9, top_p=0.95,
                             seed=5, reference=[reference]),
    }
    frames = [make_frame(h, w, seed=s) for s, (h, w) in enumerate([(64, 64), (90, 120), (120, 72), (200, 160),
                                                                   (56, 56), (150, 100), (72, 240), (100, 100)])]
    serial = _check_threads_match_serial(inspectors, frames)
    texts = {result[0][0] for task, result in serial.items() if task[0] == "explain"}
    assert len(texts) > 1  # frames differ, so a mixed-up result would be caught


def test_default_bundle_threads_match_serial():
    from omniad_edge import Inspector
    from omniad_edge.synth import make_sample

    frames = [make_sample(i, size).image for i, size in enumerate([(224, 224), (280, 196), (168, 336), (252, 252)])]
    reference = make_sample(100, 224, anomalous=False).image
    inspectors = {
        "detect": Inspector(mode="detect", threads=1, reference=[reference]),
        "explain": Inspector(mode="explain", threads=1, max_new_tokens=64),
    }
    _check_threads_match_serial(inspectors, frames, repeats=2)


def test_set_reference_while_threads_run_uses_one_whole_set(tiny_bundle):
    # a call sees the old references or the new ones, with their own prefix KV: never one with the other's cache
    from omniad_edge import Inspector

    a, b = make_frame(64, 64, seed=7), make_frame(64, 64, seed=8)  # same size: same prefix tokens
    frame = make_frame(90, 90, seed=3)
    ins = Inspector(tiny_bundle, mode="explain", threads=1, max_new_tokens=24)
    expected = {}
    for name, ref in (("a", a), ("b", b)):
        ins.set_reference([ref])
        expected[name] = _key(ins.run(frame))
    assert expected["a"] != expected["b"]

    def work(i):
        if i % 4 == 0:
            ins.set_reference([a if i % 8 == 0 else b])
            return None
        return _key(ins.run(frame))

    with ThreadPoolExecutor(THREADS) as pool:
        got = [r for r in pool.map(work, range(48)) if r is not None]
    assert all(r in (expected["a"], expected["b"]) for r in got)


def test_single_thread_steps_reuse_the_working_cache(tiny_bundle):
    # the pool hands the same cache (and with it the backend's binding and logits buffer) to every serial call
    from omniad_edge import Inspector

    ins = Inspector(tiny_bundle, mode="detect", threads=1, max_new_tokens=12)
    ins.run(make_frame(64, 64, seed=1))
    pool = {b: [id(s.cache) for s in slots] for b, slots in ins.generator._pool.items()}
    for seed in range(3):
        ins.run(make_frame(64, 64, seed=seed))
    assert {b: [id(s.cache) for s in slots] for b, slots in ins.generator._pool.items()} == pool
    assert sum(len(v) for v in pool.values()) == 1


def test_native_sampler_shared_by_threads_with_the_gil_released():
    from omniad_edge.sampling import Sampler

    x = np.random.default_rng(0).standard_normal((2, 151936)).astype(np.float32)
    mask = np.full((2, (151936 + 31) // 32), 0xFFFFFFFF, np.uint32)
    mask[:, ::3] = 0
    sampler = Sampler(temperature=0.7, top_k=50, repetition_penalty=1.2, seed=3)

    def work(seed):
        rng = sampler.new_rng(seed)
        return [sampler.sample(x, previous=[[1, 2, 3], [4, 5, 6]], allowed_mask=mask, rng=rng) for _ in range(20)]

    serial = [work(s) for s in range(THREADS)]
    with ThreadPoolExecutor(THREADS) as pool:
        parallel = list(pool.map(work, range(THREADS)))
    for want, got in zip(serial, parallel):
        for (ids_a, lp_a), (ids_b, lp_b) in zip(want, got):
            np.testing.assert_array_equal(ids_a, ids_b)
            np.testing.assert_array_equal(lp_a, lp_b)


def test_a_backend_that_is_not_concurrent_gets_one_call_at_a_time(tiny_bundle, monkeypatch):
    # TensorRT-like: one execution context. Every vision and generate call is serialised, results still serial.
    import threading

    from omniad_edge import Inspector
    from omniad_edge.backends.onnxruntime import OnnxRuntimeBackend

    monkeypatch.setattr(OnnxRuntimeBackend, "concurrent", False)
    ins = Inspector(tiny_bundle, mode="explain", threads=1, max_new_tokens=16)
    inside, most, guard = [0], [0], threading.Lock()

    def counted(method):
        def wrapper(*args, **kwargs):
            with guard:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            try:
                return method(*args, **kwargs)
            finally:
                with guard:
                    inside[0] -= 1
        return wrapper

    ins.backend.forward = counted(ins.backend.forward)
    ins.backend.encode_image = counted(ins.backend.encode_image)
    frames = [make_frame(64 + 8 * i, 64, seed=i) for i in range(6)]
    serial = [_key(ins.run(f)) for f in frames]
    with ThreadPoolExecutor(THREADS) as pool:
        got = list(pool.map(lambda f: _key(ins.run(f)), frames * 2))
    assert got == serial * 2 and most[0] == 1


def test_speculative_decoding_under_threads_writes_the_serial_text():
    """One speculative Inspector on 8 threads: the drafter learns from all of them at once (one lock), and every call
    writes the text it writes alone; its score may move in the last float digits with the drafts it was given."""
    from omniad_edge import Inspector
    from omniad_edge.synth import make_sample

    frames = [make_sample(i, anomalous=i % 2 == 1).image for i in range(6)]
    ins = Inspector(mode="explain", threads=1, speculative=True)
    serial = [ins.run(f) for f in frames]
    order = list(range(len(frames))) * 4
    random.Random(1).shuffle(order)
    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(lambda i: (i, ins.run(frames[i])), order))
    for i, got in results:
        assert (got.text, got.is_anomalous, got.finish_reason) == (serial[i].text, serial[i].is_anomalous,
                                                                   serial[i].finish_reason)
        assert got.anomaly_probability == pytest.approx(serial[i].anomaly_probability, abs=1e-5)
