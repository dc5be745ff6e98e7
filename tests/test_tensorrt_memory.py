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


def _grouped(attention: dict, **vision) -> dict:
    """A small grouped-attention manifest: tower width D 64, H 4 heads (hd 16), MLP width I 128, 4 blocks with
    block 3 full, 64-patch windows (112 px / 14 px = 8 x 8), at most 16 image tokens (N 64 patches) per frame."""
    m = qwen3b_manifest()
    m["model"]["vision"].update({"depth": 4, "hidden_size": 64, "num_heads": 4, "intermediate_size": 128,
                                 "fullatt_block_indexes": [3], **vision})
    m["preprocess"]["max_image_tokens"] = 16
    m["graphs"]["vision"]["attention"] = attention
    return m


PLAIN = {"full": "plain", "window": "plain"}
ONE_FRAME = Limits(batch=1, max_image_tokens=16, max_images=1, max_seq_len=1024, max_prefill=1024)


def test_vision_estimate_by_hand():
    est = mem.estimate_memory(_grouped(PLAIN), ONE_FRAME)  # fp32: b = 4
    p = est.parts
    # N 64; at most 4 windows of Lw 64 (a 1 x 16 token grid, windows 4 tokens a side): Nw 256; Nf = Lf = 64
    assert p["vision_live"] == 4 * 64 * 64 + 8 * 64 * 16 == 24576
    # every block: N D (4 + 3b) = 64 * 64 * 16 = 65536
    assert p["vision_full_block"] == 65536 + 4 * 64 * 64 * 4 + 12 * 64 * 4 * 64 == 327680
    assert p["vision_window_block"] == 65536 + 4 * 256 * 64 * 4 + 12 * 256 * 4 * 64 == 1114112
    assert p["vision_mlp"] == 64 * 64 * 8 + 4 * 64 * 128 * 4 == 163840
    assert p["vision_activations"] == 24576 + 1114112  # live + the largest term, whatever the depth
    half = mem.estimate_memory(_grouped(PLAIN), ONE_FRAME, fp16=True).parts  # b = 2; softmax and MLP stay fp32
    assert half["vision_full_block"] == 64 * 64 * 10 + 4 * 64 * 64 * 2 + 12 * 64 * 4 * 64 == 270336
    assert half["vision_mlp"] == 163840
    fused = mem.estimate_memory(_grouped({"full": "com.microsoft.MultiHeadAttention", "window": "plain"}),
                                ONE_FRAME).parts
    # no scores: Nf (2 H (hd + 1) + 2 D) b = 64 * (2 * 4 * 17 + 128) * 4
    assert fused["vision_full_block"] == 65536 + 64 * 264 * 4 == 133120
    int8 = _grouped(PLAIN)
    int8["graphs"]["vision"]["precision"] = "int8"
    assert mem.estimate_memory(int8, ONE_FRAME).parts["vision_mlp"] == 163840 + 64 * 128  # the uint8 copy


def _vision(m: dict, tokens: int) -> dict:
    limits = Limits(batch=1, max_image_tokens=tokens, max_images=1, max_seq_len=4096, max_prefill=4096)
    return mem.estimate_memory(m, limits).parts


def test_vision_grows_linearly_unless_plain_full_blocks():
    fused = _grouped({"full": "com.microsoft.MultiHeadAttention", "window": "plain"})
    fused["preprocess"]["max_image_tokens"] = 1024
    small, large = _vision(fused, 64), _vision(fused, 256)
    assert large["vision_activations"] == 4 * small["vision_activations"]
    plain = _grouped(PLAIN)
    plain["preprocess"]["max_image_tokens"] = 1024
    small, large = _vision(plain, 64), _vision(plain, 256)
    assert large["vision_window_block"] == 4 * small["vision_window_block"]
    # 4x the patches: the per-frame scores 12 H Nf^2 grow 16x, the rest of the block 4x
    scores = 12 * 4 * 256 * 256
    assert large["vision_full_block"] - 16 * scores == 4 * (small["vision_full_block"] - scores)


def test_vision_estimate_qwen2_vl_every_block_full():
    # Qwen2-VL: no windows, every block full; I = 4 D = 256
    m = _grouped({"full": "plain"}, window_size=None, fullatt_block_indexes=[0, 1, 2, 3], intermediate_size=256)
    m["model"]["architecture"] = "qwen2_vl"
    p = mem.estimate_memory(m, ONE_FRAME).parts
    assert "vision_window_block" not in p
    assert p["vision_full_block"] == 327680  # as the Qwen2.5-VL one above: same D, H, N
    assert p["vision_mlp"] == 64 * 64 * 8 + 4 * 64 * 256 * 4 == 294912
    assert p["vision_activations"] == 24576 + 327680
