"""omniad_edge.positions: equal to transformers' Qwen2_5_VLModel.get_rope_index, plus hand examples."""
from __future__ import annotations

import numpy as np
import pytest

from omniad_edge.positions import batch_rope_positions, decode_positions, rope_positions

TOKENS = {"image_pad": 7, "vision_start": 5, "vision_end": 6, "eos": [2], "pad": 0}


def test_hand_example_text_image_text():
    # 2 text tokens, one image of 4x6 patches (2x3 merged tokens), 2 text tokens
    ids = np.array([10, 11, 7, 7, 7, 7, 7, 7, 12, 13])
    pos, delta = rope_positions(ids, [(1, 4, 6)], TOKENS, 2)
    assert pos.dtype == np.int64
    assert pos[0].tolist() == [0, 1, 2, 2, 2, 2, 2, 2, 5, 6]
    assert pos[1].tolist() == [0, 1, 2, 2, 2, 3, 3, 3, 5, 6]
    assert pos[2].tolist() == [0, 1, 2, 3, 4, 2, 3, 4, 5, 6]
    assert delta == 7 - 10


def test_text_only_is_1d():
    pos, delta = rope_positions(np.arange(20, 29), [], TOKENS, 2)
    assert np.array_equal(pos, np.tile(np.arange(9), (3, 1))) and delta == 0


def test_adjacent_images_split_by_grid():
    ids = np.array([1] + [7] * 4 + [7] * 2 + [1])
    pos, _ = rope_positions(ids, [(1, 4, 4), (1, 2, 4)], TOKENS, 2)
    assert pos[:, 1:5].tolist() == [[1] * 4, [1, 1, 2, 2], [1, 2, 1, 2]]
    assert pos[:, 5:7].tolist() == [[3, 3], [3, 3], [3, 4]]  # second image starts after max(h, w) // 2 = 2


@pytest.mark.parametrize("ids, grids, match", [
    ([1, 7, 7, 1], [], "more image-pad"),
    ([1, 7, 7, 1], [(1, 4, 4)], "shorter"),
    ([1, 7, 7, 7, 7, 1], [(1, 4, 4), (1, 4, 4)], "more images"),
    ([], [], "non-empty"),
    ([[1, 2]], [], "1-D"),
])
def test_rejects_mismatched_prompts(ids, grids, match):
    with pytest.raises(ValueError, match=match):
        rope_positions(np.array(ids, dtype=np.int64), grids, TOKENS, 2)


def test_rejects_bad_tokens_spec():
    with pytest.raises(ValueError, match="image_pad"):
        rope_positions(np.array([1, 2]), [], {"pad": 0}, 2)


def test_decode_positions():
    out = decode_positions([10, 4], [-3, 0])
    assert out.shape == (3, 2, 1) and out[:, 0, 0].tolist() == [7] * 3 and out[:, 1, 0].tolist() == [4] * 3
    with pytest.raises(ValueError, match="same length"):
        decode_positions([1, 2], [0])


# --- against transformers ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_model():
    pytest.importorskip("transformers", reason="transformers not installed: reference comparisons skipped")
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel

    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=32, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [1, 1, 2]}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16),
        image_token_id=7, video_token_id=8, vision_start_token_id=5, vision_end_token_id=6)
    torch.manual_seed(0)
    return Qwen2_5_VLModel(cfg).eval()


def _random_prompt(rng, n_images):
    ids, grids = [int(rng.integers(10, 30)) for _ in range(rng.integers(1, 6))], []
    for _ in range(n_images):
        t, h, w = 1, 2 * int(rng.integers(1, 9)), 2 * int(rng.integers(1, 9))
        grids.append((t, h, w))
        ids += [5] + [7] * (h * w // 4) + [6] + [int(rng.integers(10, 30)) for _ in range(rng.integers(0, 5))]
    return np.array(ids, dtype=np.int64), grids


@pytest.mark.parametrize("seed", range(8))
def test_matches_get_rope_index(hf_model, seed):
    import torch

    rng = np.random.default_rng(seed)
    ids, grids = _random_prompt(rng, n_images=seed % 3 + 1)
    ref_pos, ref_delta = hf_model.get_rope_index(torch.from_numpy(ids)[None],
                                                 mm_token_type_ids=torch.from_numpy((ids == 7).astype(np.int32))[None],
                                                 image_grid_thw=torch.tensor(grids))
    pos, delta = rope_positions(ids, grids, TOKENS, 2)
    assert np.array_equal(pos, ref_pos[:, 0].numpy())
    assert delta == int(ref_delta[0, 0])


def test_batch_with_left_padding_matches_get_rope_index(hf_model):
    import torch

    rng = np.random.default_rng(42)
    prompts = [_random_prompt(rng, 1), _random_prompt(rng, 2)]
    positions, mask, deltas = batch_rope_positions([p[0] for p in prompts], [p[1] for p in prompts], TOKENS, 2)
    width = mask.shape[1]
    ids = torch.zeros((2, width), dtype=torch.long)
    for b, (p, _) in enumerate(prompts):
        ids[b, width - len(p):] = torch.from_numpy(p)
    ref_pos, ref_delta = hf_model.get_rope_index(
        ids, mm_token_type_ids=(ids == 7).int() * torch.from_numpy(mask).int(),
        image_grid_thw=torch.tensor([g for p in prompts for g in p[1]]), attention_mask=torch.from_numpy(mask))
    real = mask.astype(bool)
    assert np.array_equal(positions[:, real], ref_pos.numpy()[:, real])
    assert deltas.tolist() == ref_delta[:, 0].tolist()
    assert mask[0].tolist() == [0] * (width - len(prompts[0][0])) + [1] * len(prompts[0][0])
