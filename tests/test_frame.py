"""Frame normalisation: every accepted input -> HxWx3 uint8 RGB; every bad input -> FrameError naming it."""
import numpy as np
import pytest
from PIL import Image

from omniad_edge.errors import FrameError
from omniad_edge.frame import MAX_PIXELS, to_rgb


def _rgb(h=20, w=30):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_rgb_uint8_passes_through_unchanged():
    rgb = _rgb()
    out = to_rgb(rgb)
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)


def test_bgr_is_flipped():
    rgb = _rgb()
    np.testing.assert_array_equal(to_rgb(np.ascontiguousarray(rgb[:, :, ::-1]), color="bgr"), rgb)


def test_grey_and_single_channel_are_replicated():
    grey = _rgb()[:, :, 0]
    for frame in (grey, grey[:, :, None]):
        out = to_rgb(frame)
        assert out.shape == (20, 30, 3)
        for c in range(3):
            np.testing.assert_array_equal(out[:, :, c], grey)


def test_rgba_drops_alpha_and_bgra_flips():
    rgb = _rgb()
    rgba = np.concatenate([rgb, np.full((20, 30, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(to_rgb(rgba), rgb)
    bgra = np.concatenate([rgb[:, :, ::-1], rgba[:, :, 3:]], axis=2)
    np.testing.assert_array_equal(to_rgb(bgra, color="bgr"), rgb)


def test_uint16_and_float_are_scaled():
    values = np.array([0, 257, 32896, 65535], np.uint16)
    frame16 = np.tile(values, (16, 4))  # 16x16
    out = to_rgb(frame16)
    np.testing.assert_array_equal(out[0, :4, 0], [0, 1, 128, 255])
    framef = np.tile(np.array([0.0, 0.5, 1.0, 0.25], np.float32), (16, 4))
    np.testing.assert_array_equal(to_rgb(framef)[0, :4, 1], [0, 128, 255, 64])


def test_non_contiguous_view_is_made_contiguous():
    big = _rgb(40, 60)
    view = big[::2, ::2]
    out = to_rgb(view)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, view)


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA", "LA", "CMYK", "1", "YCbCr", "I;16"])
def test_pil_images_of_any_mode(mode):
    base = Image.fromarray(_rgb(), "RGB")
    if mode == "I;16":
        image = Image.fromarray((np.arange(600).reshape(20, 30) * 100).astype(np.uint16))
    else:
        image = base.convert(mode)
    out = to_rgb(image)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    if mode == "RGB":
        np.testing.assert_array_equal(out, np.asarray(base))


def test_files_and_bytes(tmp_path):
    rgb = _rgb()
    path = tmp_path / "frame.png"
    Image.fromarray(rgb).save(path)
    np.testing.assert_array_equal(to_rgb(path), rgb)
    np.testing.assert_array_equal(to_rgb(str(path)), rgb)
    np.testing.assert_array_equal(to_rgb(path.read_bytes()), rgb)


@pytest.mark.parametrize("frame, message", [
    (None, "got None"),
    (np.zeros((0, 10, 3), np.uint8), "empty"),
    (np.zeros((1, 1, 3), np.uint8), "smaller than the minimum"),
    (np.zeros((13, 100, 3), np.uint8), "smaller than the minimum"),
    (np.zeros((20, 20, 2), np.uint8), "expected HxW, HxWx1, HxWx3 or HxWx4"),
    (np.zeros((20, 20, 3, 1), np.uint8), "is not an image"),
    (np.zeros(30, np.uint8), "is not an image"),
    (np.zeros((20, 20, 3), np.int32), "dtype int32 is not supported"),
    (np.zeros((20, 20, 3), bool), "dtype bool is not supported"),
    (np.full((20, 20, 3), np.nan, np.float32), "NaN"),
    (np.full((20, 20, 3), 2.0, np.float64), r"must lie in \[0, 1\]"),
    (np.zeros((20, 4100), np.uint8), "aspect ratio"),
    ([[1, 2], [3, 4]], "type list is not supported"),
    (b"", "bytes input is empty"),
    (b"not an image", "cannot read image bytes"),
])
def test_bad_frames_raise_frame_error(frame, message):
    with pytest.raises(FrameError, match=message):
        to_rgb(frame)


def test_bad_color_argument():
    with pytest.raises(FrameError, match="color must be 'rgb' or 'bgr'"):
        to_rgb(_rgb(), color="hsv")


def test_gigantic_frame_is_refused_without_copy():
    # a broadcast view: 10^8+ pixels without allocating them
    huge = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (10_001, 10_001, 3))
    assert huge.shape[0] * huge.shape[1] > MAX_PIXELS
    with pytest.raises(FrameError, match="MP cap"):
        to_rgb(huge)


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(FrameError, match="does not exist"):
        to_rgb(tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(FrameError, match="cannot read file"):
        to_rgb(bad)
    truncated = tmp_path / "truncated.png"
    Image.fromarray(_rgb(64, 64)).save(tmp_path / "ok.png")
    truncated.write_bytes((tmp_path / "ok.png").read_bytes()[:200])
    with pytest.raises(FrameError, match="cannot read file"):
        to_rgb(truncated)


def test_pil_32bit_modes_are_refused():
    with pytest.raises(FrameError, match="mode 'F'"):
        to_rgb(Image.fromarray(np.zeros((20, 20), np.float32)))
