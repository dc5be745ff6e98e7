"""omniad_edge.preprocess: equal to transformers' Qwen2-VL processor and vision-tower index computations."""
from __future__ import annotations

import numpy as np
import pytest

from helpers.frames import make_frame
from omniad_edge import preprocess as pp

SPEC = {"patch_size": 14, "merge_size": 2, "temporal_patch_size": 2, "min_pixels": 56 * 56,
        "max_pixels": 28 * 28 * 1280, "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711], "resample": "bicubic", "max_image_tokens": 1280}


def _transformers():
    return pytest.importorskip("transformers", reason="transformers not installed: reference comparisons skipped")


# --- smart_resize --------------------------------------------------------------------------------------------

def test_smart_resize_hand_examples():
    assert pp.smart_resize(224, 224) == (224, 224)
    assert pp.smart_resize(100, 300) == (112, 308)  # round(100/28)=4 -> 112, round(300/28)=11 -> 308
    assert pp.smart_resize(10, 10, min_pixels=56 * 56) == (56, 56)  # grown to the minimum area
    h, w = pp.smart_resize(4000, 3000, max_pixels=28 * 28 * 100)
    assert h % 28 == 0 and w % 28 == 0 and h * w <= 28 * 28 * 100


def test_smart_resize_matches_transformers():
    _transformers()
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    rng = np.random.default_rng(0)
    sizes = [(int(h), int(w)) for h, w in rng.integers(20, 3000, size=(300, 2)) if max(h, w) / min(h, w) <= 200]
    sizes += [(14, 14), (28, 2800), (1080, 1920), (1, 150), (3000, 3000)]
    for h, w in sizes:
        for lo, hi in ((56 * 56, 28 * 28 * 1280), (64 * 28 * 28, 256 * 28 * 28), (3136, 3136 * 4)):
            assert pp.smart_resize(h, w, 28, lo, hi) == smart_resize(h, w, 28, lo, hi), (h, w, lo, hi)


@pytest.mark.parametrize("args, match", [
    ((0, 10), "height"), ((10, -3), "width"), ((10.5, 10), "height"), ((10, 10, 0), "factor"),
    ((1, 500), "aspect ratio"),
])
def test_smart_resize_rejects_bad_sizes(args, match):
    with pytest.raises(ValueError, match=match):
        pp.smart_resize(*args)


def test_smart_resize_rejects_min_above_max():
    with pytest.raises(ValueError, match="min_pixels"):
        pp.smart_resize(100, 100, 28, min_pixels=10_000, max_pixels=5_000)


# --- pixels --------------------------------------------------------------------------------------------------

def test_patchify_order_is_merge_blocks_then_patches():
    """Independent of transformers: patch k of a 2x2 merge block sits where the processor puts it."""
    h, w = 56, 84  # 4 x 6 patches, 2 x 3 merge blocks
    chw = np.zeros((3, h, w), dtype=np.float32)
    rows, cols = np.mgrid[0:h, 0:w]
    chw[0] = rows // 14  # patch row in channel 0
    chw[1] = cols // 14  # patch col in channel 1
    chw[2] = rows % 14 * 14 + cols % 14  # pixel inside the patch in channel 2
    patches, gh, gw = pp.patchify(chw, 14, 2, 2)
    assert (gh, gw) == (4, 6) and patches.shape == (24, 3 * 2 * 14 * 14)
    expected = []  # block-major, 2x2 inside each block
    for br in range(2):
        for bc in range(3):
            for r in range(2):
                for c in range(2):
                    expected.append((2 * br + r, 2 * bc + c))
    x = patches.reshape(24, 3, 2, 14, 14)
    for k, (pr, pc) in enumerate(expected):
        assert np.all(x[k, 0] == pr) and np.all(x[k, 1] == pc), k
        assert np.array_equal(x[k, 2, 0].ravel(), np.arange(196)), k  # row-major pixels inside the patch
        assert np.array_equal(x[k, :, 0], x[k, :, 1])  # the still image repeated on the temporal axis


@pytest.mark.parametrize("size", [(90, 150), (200, 120), (57, 301), (480, 640), (33, 1000)])
def test_preprocess_image_matches_transformers_processor(size):
    """Same Pillow bicubic resize of the same uint8 image, so the only differences are float rounding in
    rescale/normalise (float32 here): 1e-5 is about 1/1000 of one grey level (1/255/0.27 = 0.0145)."""
    _transformers()
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    frame = make_frame(*size, seed=sum(size))
    spec = dict(SPEC, max_pixels=28 * 28 * 300)
    ours = pp.preprocess_image(frame, spec)
    proc = Qwen2VLImageProcessorPil(min_pixels=spec["min_pixels"], max_pixels=spec["max_pixels"])
    ref = proc(images=[frame], return_tensors="np")
    assert ours.grid_thw == tuple(int(v) for v in ref["image_grid_thw"][0])
    assert ours.resized == (ours.grid_thw[1] * 14, ours.grid_thw[2] * 14)
    assert ours.pixel_values.dtype == np.float32 and ours.pixel_values.shape == ref["pixel_values"].shape
    np.testing.assert_allclose(ours.pixel_values, ref["pixel_values"], rtol=0, atol=1e-5)


def test_max_image_tokens_caps_the_grid():
    frame = make_frame(1000, 1400)
    out = pp.preprocess_image(frame, dict(SPEC, max_image_tokens=64))
    _, gh, gw = out.grid_thw
    assert gh * gw // 4 <= 64
    assert pp.preprocess_image(frame, dict(SPEC, max_image_tokens=0)).grid_thw == \
        pp.preprocess_image(frame, SPEC).grid_thw  # 0/None: no extra cap


@pytest.mark.parametrize("bad, match", [
    (np.zeros((10, 10), np.uint8), "HxWx3 uint8"), (np.zeros((10, 10, 4), np.uint8), "HxWx3 uint8"),
    (np.zeros((10, 10, 3), np.float32), "HxWx3 uint8"), ([[1, 2, 3]], "HxWx3 uint8"),
])
def test_preprocess_rejects_bad_frames(bad, match):
    with pytest.raises(ValueError, match=match):
        pp.preprocess_image(bad, SPEC)


def test_preprocess_rejects_incomplete_spec():
    with pytest.raises(ValueError, match="spec"):
        pp.preprocess_image(make_frame(56, 56), {"patch_size": 14})


def test_resize_rejects_unknown_filter():
    with pytest.raises(ValueError, match="resample"):
        pp.resize(make_frame(30, 30), (28, 28), "area")


# --- vision indices ------------------------------------------------------------------------------------------

GRID_LISTS = [
    [(1, 12, 8)],
    [(1, 16, 16)],  # sides an exact multiple of the window
    [(1, 12, 8), (1, 6, 10)],
    [(1, 4, 38), (1, 22, 6), (1, 2, 2)],
    [(2, 8, 12)],  # two frames: each its own attention segment
    [(1, 36, 52), (1, 10, 14)],
]


def _boundaries(segments: np.ndarray) -> list[int]:
    """Segment ids -> cumulative boundaries, the form transformers uses (cu_seqlens)."""
    change = np.flatnonzero(np.diff(segments)) + 1
    return [0, *change.tolist(), len(segments)]


@pytest.mark.parametrize("grids", GRID_LISTS)
@pytest.mark.parametrize("window_size", [112, 56])
def test_vision_indices_match_transformers(grids, window_size):
    _transformers()
    import torch
    from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids, get_vision_window_index

    thw = torch.tensor(grids)
    idx = pp.vision_indices(grids, 2, window_size, 14)
    assert np.array_equal(idx["rotary_pos_ids"], get_vision_position_ids(thw, 2).numpy())
    window_index, cu_window = get_vision_window_index(thw, 2, window_size, 14)
    assert np.array_equal(idx["window_index"], window_index.numpy())
    assert _boundaries(idx["window_segments"]) == cu_window.tolist()
    assert _boundaries(idx["image_segments"]) == get_vision_cu_seqlens(thw).tolist()
    assert all(v.dtype == np.int64 for v in idx.values())
    # the graph's groups are transformers' attention segments: windows, then frames, patches in window order
    patches = (window_index.numpy()[:, None] * 4 + np.arange(4)).ravel()
    for name, cu in (("window", cu_window.tolist()), ("image", get_vision_cu_seqlens(thw).tolist())):
        gather = idx[f"{name}_gather"]
        assert gather.shape == (len(cu) - 1, max(np.diff(cu)))
        for g, (lo, hi) in enumerate(zip(cu[:-1], cu[1:])):
            assert gather[g, :hi - lo].tolist() == patches[lo:hi].tolist()
            assert np.all(gather[g, hi - lo:] == -1)
        assert np.array_equal(gather.ravel()[idx[f"{name}_scatter"]], np.arange(len(patches)))


@pytest.mark.parametrize("grids", GRID_LISTS)
def test_vision_indices_without_windows_group_frames_in_patch_order(grids):
    """Qwen2-VL (window_size None): one group per frame, processor order, and no window inputs."""
    idx = pp.vision_indices(grids, 2, None, 14)
    sizes = [h * w for t, h, w in grids for _ in range(t)]
    assert set(idx) == {"rotary_pos_ids", "image_gather", "image_scatter", "image_segments"}
    start = 0
    for g, size in enumerate(sizes):
        assert idx["image_gather"][g, :size].tolist() == list(range(start, start + size))
        start += size
    assert np.array_equal(idx["image_gather"].ravel()[idx["image_scatter"]], np.arange(start))


def test_vision_indices_shapes_and_inverse():
    grids = [(1, 12, 8), (1, 6, 10)]
    idx = pp.vision_indices(grids, 2, 112, 14)
    n = 12 * 8 + 6 * 10
    assert idx["rotary_pos_ids"].shape == (n, 2)
    assert idx["window_index"].shape == idx["reverse_window_index"].shape == (n // 4,)
    assert idx["window_segments"].shape == idx["image_segments"].shape == (n,)
    assert np.array_equal(idx["window_index"][idx["reverse_window_index"]], np.arange(n // 4))
    # segments never cross images, and window order keeps each image's tokens together
    assert sorted(set(idx["image_segments"].tolist())) == [0, 1]
    assert np.all(np.diff(idx["image_segments"]) >= 0)


def test_vision_indices_hand_example():
    """One 4x4-patch image, merged 2x2, window of 1 merged token (28 px): every merge unit is its own window."""
    idx = pp.vision_indices([(1, 4, 4)], 2, 28, 14)
    assert idx["window_index"].tolist() == [0, 1, 2, 3]
    assert idx["window_segments"].tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    assert idx["rotary_pos_ids"][:4].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert idx["rotary_pos_ids"][4:8].tolist() == [[0, 2], [0, 3], [1, 2], [1, 3]]


@pytest.mark.parametrize("grids, kwargs, match", [
    ([], {}, "grid_thw_list"), ([(1, 0, 4)], {}, "grid_thw_list"), ([(1, 3, 4)], {}, "multiples"),
    ([(1, 4, 4)], {"window_size": 20}, "window_size"),
])
def test_vision_indices_rejects_bad_grids(grids, kwargs, match):
    args = {"spatial_merge_size": 2, "window_size": 112, "patch_size": 14, **kwargs}
    with pytest.raises(ValueError, match=match):
        pp.vision_indices(grids, **args)


def test_concat_images_stacks_pixels_in_order():
    a = pp.preprocess_image(make_frame(90, 150, 1), SPEC)
    b = pp.preprocess_image(make_frame(200, 120, 2), SPEC)
    inputs = pp.concat_images([a, b], 2, 112, 14)
    assert np.array_equal(inputs["pixel_values"], np.concatenate([a.pixel_values, b.pixel_values]))
    # the grouped graph's inputs, and the segment inputs that graphs exported before them read
    assert set(inputs) == {"pixel_values", "rotary_pos_ids", "image_gather", "image_scatter", "window_gather",
                           "window_scatter", "window_index", "reverse_window_index", "window_segments",
                           "image_segments"}
    with pytest.raises(ValueError, match="images"):
        pp.concat_images([], 2, 112, 14)
