"""Planning (pure, every machine): limits from the manifest and the flags, optimisation profiles, buffer sizes."""
from __future__ import annotations

import pytest

from helpers.tensorrt_cases import qwen3b_manifest, small_manifest
from omniad_edge.contract import VISION_INPUTS
from omniad_edge.tensorrt import limits as lim
from omniad_edge.tensorrt.limits import BuildOptions, Limits


# -- limits -----------------------------------------------------------------------------------------------------

def test_default_limits_come_from_the_manifest():
    limits = lim.resolve_limits(qwen3b_manifest(), BuildOptions())
    # 1280 tokens + 512 prompt/answer, rounded up to a multiple of 256
    assert limits == Limits(batch=1, max_image_tokens=1280, max_images=1, max_seq_len=1792, max_prefill=1792)
    assert lim.resolve_limits(qwen3b_manifest(), BuildOptions(batch=3)).max_images == 3


def test_token_cap_falls_back_to_max_pixels():
    m = qwen3b_manifest()
    del m["preprocess"]["max_image_tokens"]
    assert lim.image_token_cap(m) == 1003520 // (28 * 28) == 1280


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
        lim.resolve_limits(qwen3b_manifest(), opts)


# -- profiles ---------------------------------------------------------------------------------------------------

def test_vision_profile_counts_patches_as_four_per_token():
    limits = Limits(batch=1, max_image_tokens=1280, max_images=2, max_seq_len=4096, max_prefill=4096)
    p = lim.vision_profile(qwen3b_manifest(), limits)
    assert p["pixel_values"] == ((4, 1176), (5120, 1176), (10240, 1176))
    assert p["rotary_pos_ids"] == ((4, 2), (5120, 2), (10240, 2))
    assert p["window_index"] == p["reverse_window_index"] == ((1,), (1280,), (2560,))
    assert p["window_segments"] == p["image_segments"] == ((4,), (5120,), (10240,))
    assert tuple(p) == VISION_INPUTS


def test_decoder_profiles_prefill_and_decode():
    m = small_manifest()
    limits = Limits(batch=2, max_image_tokens=64, max_images=2, max_seq_len=512, max_prefill=256)
    prefill, decode = lim.decoder_profiles(m, limits)
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
    assert sorted(prefill) == sorted(decode) == sorted(expected) == sorted(lim.decoder_input_names(m))


def test_every_profile_is_ordered():
    m = qwen3b_manifest()
    for opts in (BuildOptions(), BuildOptions(batch=4, max_image_tokens=256, max_seq_len=1024, max_prefill=512)):
        limits = lim.resolve_limits(m, opts)
        for profile in [lim.vision_profile(m, limits), *lim.decoder_profiles(m, limits)]:
            for name, (low, opt, high) in profile.items():
                assert all(a <= b <= c for a, b, c in zip(low, opt, high)), name


def test_kv_cache_size_for_qwen3b():
    limits = Limits(batch=1, max_image_tokens=1280, max_images=1, max_seq_len=2048, max_prefill=2048)
    # 36 layers x (K + V) x 2048 positions x 2 heads x 128 dims x 4 bytes = 144 MiB
    assert lim.kv_cache_bytes(qwen3b_manifest(), limits) == 144 << 20
    assert lim.kv_scratch_bytes(qwen3b_manifest(), limits) == 0
    batched = Limits(batch=2, max_image_tokens=1280, max_images=2, max_seq_len=2048, max_prefill=512)
    assert lim.kv_scratch_bytes(qwen3b_manifest(), batched) == 36 * 2 * 2 * 512 * 2 * 128 * 4
    assert lim.kv_scratch_bytes(qwen3b_manifest(), limits, cuda_graph=True) == 36 * 2 * 1 * 1 * 2 * 128 * 4


def test_kv_scratch_for_rows_off_the_256_byte_alignment():
    """128-byte rows (2 heads x 16 dims): new keys cannot be bound in place at odd offsets, so batch 1 gets a
    scratch buffer for a whole prefill."""
    m = qwen3b_manifest()
    m["model"].update(num_key_value_heads=2, head_dim=16)
    limits = Limits(batch=1, max_image_tokens=64, max_images=1, max_seq_len=256, max_prefill=128)
    assert lim.kv_row_bytes(m) == 128 and lim.kv_scratch_seq(m, limits) == 128
    assert lim.kv_scratch_bytes(m, limits) == 36 * 2 * 128 * 128


def test_io_buffer_plan():
    limits = Limits(batch=2, max_image_tokens=64, max_images=2, max_seq_len=512, max_prefill=256)
    plan = lim.io_buffer_plan(small_manifest(), limits)
    assert plan["vision.pixel_values"] == 512 * 1176 * 4  # 4 x 64 tokens x 2 images
    assert plan["vision.window_index"] == 128 * 8
    assert plan["vision.image_embeds"] == 128 * 2048 * 4
    assert plan["decoder.inputs_embeds"] == 2 * 256 * 16 * 4
    assert plan["decoder.attention_mask"] == 2 * (512 + 256) * 8
    assert plan["decoder.logits"] == 2 * 100 * 4


def test_window_bound_holds_for_every_frame_shape_the_preprocessor_makes():
    """The profile's window count is the most any frame within the token cap can produce, thin frames included
    (windows tile from the corner, so a 1 x T grid has the most), and far below one window per token."""
    from omniad_edge.preprocess import smart_resize, vision_indices

    cap = 256
    bound = lim.max_windows(cap, 4)
    seen = 0
    for height in (28, 29, 56, 84, 112, 140, 200, 280, 448, 700):
        for ratio in (1, 1.5, 3, 7, 13, 37, 80, 150, 199.9):
            for h, w in ((height, int(height * ratio)), (int(height * ratio), height)):
                gh, gw = smart_resize(h, w, max_pixels=28 * 28 * cap)
                windows = vision_indices([(1, gh // 14, gw // 14)], 2, 112, 14)["window_gather"].shape[0]
                assert (gh // 28) * (gw // 28) <= cap
                assert windows <= bound, (h, w)
                seen = max(seen, windows)
    assert seen > 16 * 2  # thin frames need more than twice a square frame's 16 windows
    assert bound <= cap // 4  # a 1 x 256 grid; the profile used to allow one window per token


def test_window_profile_is_bounded_by_the_frame_shapes():
    limits = Limits(batch=1, max_image_tokens=1280, max_images=2, max_seq_len=4096, max_prefill=4096)
    m = qwen3b_manifest()
    m["graphs"]["vision"]["attention"] = {"full": "plain", "window": "plain"}  # the grouped graph's inputs
    p = lim.vision_profile(m, limits)
    assert p["window_gather"][2] == (2 * lim.max_windows(1280, 4), 64)
    assert p["window_gather"][2][0] < 2 * 1280 // 8
