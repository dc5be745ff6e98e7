"""The device-memory estimate and check (pure, every machine)."""
from __future__ import annotations

import pytest

from helpers.tensorrt_cases import H100, ORIN, qwen3b_manifest
from omniad_edge.errors import BackendError
from omniad_edge.tensorrt import memory as mem
from omniad_edge.tensorrt.limits import BuildOptions, Limits, resolve_limits


def test_memory_estimate_parts():
    m = qwen3b_manifest()
    limits = Limits(batch=1, max_image_tokens=1280, max_images=1, max_seq_len=2048, max_prefill=2048)
    est = mem.estimate_memory(m, limits)
    assert est.weights == 1000 + (2 << 30) + 5000 + (12 << 30)
    assert est.parts["vision_weights"] == 1000 + (2 << 30)
    # vision: scores + probabilities for 16 heads over 5120 patches in float32, plus MLP/activation rows
    assert est.parts["vision_activations"] == 2 * 16 * 5120 * 5120 * 4 + 16 * 5120 * 1280 * 4
    assert est.kv_cache == 144 << 20 and est.host_embeddings == 0
    assert est.total == (est.weights + est.kv_cache + est.activations + est.io_buffers + mem.RUNTIME_OVERHEAD)
    half = mem.estimate_memory(m, limits, fp16=True)
    assert half.weights == est.weights // 2 and half.parts["vision_activations"] == est.parts["vision_activations"] // 2
    jetson = mem.estimate_memory(m, limits, integrated=True)
    assert jetson.host_embeddings == 151936 * 2048 * 4  # the host embedding table shares Jetson's memory
    assert "GiB" in est.describe()


def test_memory_grows_with_every_limit():
    m = qwen3b_manifest()
    base = mem.estimate_memory(m, resolve_limits(m, BuildOptions(max_image_tokens=256, max_seq_len=1024))).total
    for opts in (BuildOptions(max_image_tokens=512, max_seq_len=1024),
                 BuildOptions(max_image_tokens=256, max_seq_len=2048),
                 BuildOptions(max_image_tokens=256, max_seq_len=1024, batch=2)):
        assert mem.estimate_memory(m, resolve_limits(m, opts)).total > base


def test_memory_check_refuses_with_advice():
    m = qwen3b_manifest()
    est = mem.estimate_memory(m, resolve_limits(m, BuildOptions()), integrated=True)
    with pytest.raises(BackendError, match="--max-image-tokens") as info:
        mem.check_memory(est, ORIN)  # 14 GiB of fp32 weights cannot fit an 8 GB Orin
    assert "Orin" in str(info.value)
    mem.check_memory(est, H100)
