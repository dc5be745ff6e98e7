"""Text-as-Mask codecs, streaming, frame-resolution masks and components (omniad_edge.tam over the native core)."""
from __future__ import annotations

import string

import numpy as np
import pytest

pytest.importorskip("omniad_edge._native", reason="native module not built (pip install -e .)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from omniad_edge import tam  # noqa: E402

FAST = settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
LABELS = [["others", "anomaly"], ["others", "scratch", "crack"], ["bg", "dent", "hole", "stain", "burn"]]


def _labels(codec: str, k: int) -> list[str]:
    if codec == "coords":  # binary by design (JUDO)
        return LABELS[0]
    names = LABELS[min(k, len(LABELS)) - 1] if k <= 4 else ["others"] + [f"class{i}" for i in range(1, k + 1)]
    if codec == "compact" and len(names[0]) < 3:
        names = ["background"] + names[1:]
    return names


@st.composite
def grids(draw, codec: str):
    g = draw(st.integers(1, 26 if codec == "compact" else 40))
    k = draw(st.integers(1, 1 if codec == "coords" else 4))
    labels = _labels(codec, k)
    grid = draw(hnp.arrays(np.uint8, (g, g), elements=st.integers(0, len(labels) - 1)))
    if draw(st.booleans()):  # also sparse grids, closer to real masks
        grid = grid * (draw(hnp.arrays(np.uint8, (g, g), elements=st.integers(0, 4))) == 0)
    return grid.astype(np.uint8), labels


# ---- hand-worked examples ------------------------------------------------------------------------------------------

def test_compact_examples():
    c = tam.Codec("compact", grid=16, labels=["others", "scratch", "crack"])
    g = np.zeros((16, 16), np.uint8)
    assert c.encode(g) == "none"
    g[9, 5:7] = 1          # row j, columns f..g
    g[9, 10:12] = 1        # columns k..l
    g[10, 5] = 1           # single cell
    g[10, 15] = 2          # label switches to crack, column p
    g[11, 0] = 2           # stays crack
    assert c.encode(g) == "j fg kl;k ff crack: pp;l aa"
    d = c.decode("<seg>j fg kl;k ff crack: pp;l aa</seg>")
    assert np.array_equal(d.grid, g) and not d.repaired and d.complete and d.problems == []


def test_rle_examples_and_text4seg_separator():
    c = tam.Codec("rle", grid=4, labels=["others", "anomaly"])
    g = np.zeros((4, 4), np.uint8)
    g[1, 1:3] = 1
    text = c.encode(g)
    assert text == "others *4\nothers *1| anomaly *2| others *1\nothers *4\nothers *4"
    text4seg = "<seg>others *4\n others *1| anomaly *2| others *1\n others *4\n others *4</seg>"
    d = c.decode(text4seg)
    assert np.array_equal(d.grid, g) and not d.repaired and d.complete


def test_rle_pads_with_last_value_and_truncates_like_text4seg():
    c = tam.Codec("rle", grid=4)
    d = c.decode("others *4\nothers *2| anomaly *1")   # 7 cells: 9 missing, padded with anomaly
    assert d.repaired and not d.complete
    assert d.grid.ravel().tolist() == [0] * 6 + [1] * 10
    d = c.decode("anomaly *10| others *10")             # 20 cells: truncated to 16
    assert d.repaired and d.grid.ravel().tolist() == [1] * 10 + [0] * 6


def test_default_labels_grow_with_the_grid():
    g = np.zeros((8, 8), np.uint8)
    g[0, 0], g[1, 1] = 1, 3
    text = tam.encode(g)
    assert "anomaly3:" in text
    assert np.array_equal(tam.decode(text, grid_size=8, labels=["others", "anomaly", "anomaly2", "anomaly3"]).grid, g)


# ---- properties ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("codec", tam.CODECS)
@FAST
@given(data=st.data())
def test_encode_decode_identity(codec, data):
    grid, labels = data.draw(grids(codec))
    c = tam.Codec(codec, grid=grid.shape[0], labels=labels)
    text = c.encode(grid)
    d = c.decode(text)
    assert np.array_equal(d.grid, grid)
    assert not d.repaired and d.complete and d.problems == []
    d = c.decode("<seg>" + text + "</seg> trailing text is ignored")
    assert np.array_equal(d.grid, grid) and not d.repaired


@pytest.mark.parametrize("codec", tam.CODECS)
@FAST
@given(data=st.data())
def test_stream_matches_one_shot_decode(codec, data):
    grid, labels = data.draw(grids(codec))
    c = tam.Codec(codec, grid=grid.shape[0], labels=labels)
    text = "<seg>" + c.encode(grid) + "</seg>"
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=12)))
    s = c.stream()
    rows, last = [], 0
    for cut in cuts + [len(text)]:
        rows.append(s.feed(text[last:cut]))
        last = cut
    assert rows == sorted(rows), "rows_done must never go back"
    assert s.closed and rows[-1] == grid.shape[0]
    d = s.result()
    assert np.array_equal(d.grid, grid) and d.complete and not d.repaired


def test_stream_closes_on_none_before_the_tag():
    s = tam.Codec("compact").stream()
    s.feed("<seg>no")
    assert not s.closed
    s.feed("ne")
    assert s.closed and s.result().complete and s.result().empty


def test_stream_snapshot_is_incomplete_until_closed():
    c = tam.Codec("compact")
    s = c.stream()
    assert s.feed("<seg>c bd;d ce") == 3          # rows a..c final once row d started
    snap = s.result()
    assert not snap.complete
    assert snap.grid[2, 1:4].all() and snap.grid[3, 2:5].all()
    s.feed("</seg>")
    assert s.closed and s.result().complete


# ---- malformed text: never raise, always (G, G), repaired flagged --------------------------------------------------

GARBAGE = st.text(alphabet=st.characters(codec="utf-8"), max_size=400)
NEAR_VALID = st.text(alphabet=string.ascii_letters + string.digits + " *|:;,-\n<>/", max_size=400)


@pytest.mark.parametrize("codec", tam.CODECS)
@FAST
@given(text=st.one_of(GARBAGE, NEAR_VALID), g=st.integers(1, 26))
def test_decoder_fuzz_never_raises(codec, text, g):
    labels = _labels(codec, 2)
    c = tam.Codec(codec, grid=g, labels=labels)
    for d in (c.decode(text), _streamed(c, text)):
        assert d.grid.shape == (g, g) and d.grid.dtype == np.uint8
        assert int(d.grid.max(initial=0)) < len(labels)
        assert len(d.problems) <= 8 and all(isinstance(p, str) for p in d.problems)
        assert d.repaired == bool(d.problems)


def _streamed(c, text):
    s = c.stream()
    for i in range(0, len(text), 7):
        s.feed(text[i:i + 7])
    return s.result()


@pytest.mark.parametrize("codec", tam.CODECS)
@FAST
@given(text=GARBAGE)
def test_text_with_foreign_characters_is_flagged(codec, text):
    d = tam.Codec(codec).decode("#@" + text)
    assert d.repaired


@pytest.mark.parametrize("text,problem", [
    ("others *-3", "positive integer"),
    ("anomaly *999999999999999999999999999999", "cells"),
    ("others *16\n" * 40, "rows"),
    ("others 16", "'*count'"),
    ("pebble *256", "unknown label"),
])
def test_rle_malformed_examples(text, problem):
    d = tam.Codec("rle").decode(text)
    assert d.repaired and d.grid.shape == (16, 16)
    assert any(problem in p for p in d.problems), d.problems


def test_rle_huge_count_fills_the_grid_once():
    d = tam.Codec("rle").decode("anomaly *" + "9" * 100000)
    assert d.repaired and d.grid.all()


@pytest.mark.parametrize("text,repaired", [
    ("z aa", True), ("b zz", True), ("b ca", True), ("b", True), ("b 12", True), ("unknownlabel: b aa", True),
    ("b aa;none", True), ("b aa\U0001F600 cc", True), ("\x00\x01\x02", True), ("", True),
    ("b aa;;;;c cc", False),   # empty records are harmless
    ("none;b aa", False),      # "none" ends the mask; what follows is not mask text
    ("B AA", False),           # case-insensitive
])
def test_compact_malformed_examples(text, repaired):
    d = tam.Codec("compact").decode(text)
    assert d.grid.shape == (16, 16)
    assert d.repaired is repaired, d.problems


def test_compact_repair_keeps_what_is_readable():
    d = tam.Codec("compact").decode("b ca dd; q zz; c aa")
    assert d.repaired
    assert d.grid[1, :3].all() and d.grid[1, 3] == 1 and d.grid[2, 0] == 1
    assert d.grid.sum() == 5


@pytest.mark.parametrize("text,cells,repaired", [
    ("None", [], False),
    ("(11,12)-(11,14), (12,11)", [(10, 11), (10, 12), (10, 13), (11, 10)], False),  # JUDO's own example
    ("( 2 , 3 ) - ( 2 , 4 ),(16,16)", [(1, 2), (1, 3), (15, 15)], False),         # spacing is free
    ("(2,4)-(2,3)", [(1, 2), (1, 3)], True),                                        # reversed: swapped
    ("(1,16)-(2,1)", [(0, 15), (1, 0)], True),                                      # spans rows: reading order
    ("(0,3), (17,1), (5)", [], True),                                               # outside the grid / no col
    ("(3,3) junk", [(2, 2)], True),
    ("(1,1), None", [(0, 0)], True),
    ("", [], True),
])
def test_coords_examples(text, cells, repaired):
    d = tam.Codec("coords").decode("<seg>" + text + "</seg>")
    expected = np.zeros((16, 16), np.uint8)
    for r, c in cells:
        expected[r, c] = 1
    assert np.array_equal(d.grid, expected)
    assert d.repaired is repaired, d.problems
    assert d.complete


def test_coords_encodes_runs_per_row_and_none():
    c = tam.Codec("coords")
    g = np.zeros((16, 16), np.uint8)
    assert c.encode(g) == "None"
    g[10, 11:14] = 1
    g[11, 10] = 1
    assert c.encode(g) == "(11,12)-(11,14), (12,11)"
    with pytest.raises(ValueError, match="exactly 2"):
        tam.Codec("coords", labels=["others", "scratch", "crack"])


def test_coords_stream_rows_and_none():
    s = tam.Codec("coords").stream()
    assert s.feed("<seg>(3,4)") == 0       # the ',' inside the cell ends nothing
    assert s.feed(", (5,6)-(5,7), ") == 4  # rows before row 5 are final
    assert not s.closed
    s.feed("</seg>")
    assert s.closed and s.result().grid.sum() == 3
    s = tam.Codec("coords").stream()
    s.feed("<seg>Non")
    assert not s.closed
    s.feed("e")
    assert s.closed and s.result().empty and s.result().complete


@pytest.mark.parametrize("codec", tam.CODECS)
def test_ten_megabyte_inputs_are_bounded(codec):
    c = tam.Codec(codec)
    for text in ("x" * 10_000_000, ";" * 10_000_000, "\n" * 10_000_000, "a aa " * 2_000_000,
                 "others *1| " * 1_000_000, "é" * 5_000_000):
        d = c.decode(text)
        assert d.grid.shape == (16, 16)
    assert c.decode("q" * 10_000_000 + "</seg>").repaired


# ---- manifest specs and argument errors ----------------------------------------------------------------------------

def test_codec_from_spec_reads_the_manifest_dict():
    spec = {"codec": "compact", "grid": 16, "labels": ["others", "scratch", "crack"], "background": 0,
            "coverage": 0.02}
    c = tam.codec_from_spec(spec, tags=("<seg>", "</seg>"))
    assert (c.codec, c.grid, c.labels, c.coverage) == ("compact", 16, ["others", "scratch", "crack"], 0.02)


@pytest.mark.parametrize("spec,error,word", [
    ({"codec": "png"}, ValueError, "codec"),
    ({"codec": "coords", "grid": 257}, ValueError, "grid"),
    ({"codec": "compact", "grid": 27}, ValueError, "grid"),
    ({"codec": "rle", "grid": 0}, ValueError, "grid"),
    ({"codec": "compact", "grid": "16"}, TypeError, "grid"),
    ({"codec": "compact", "labels": ["others"]}, ValueError, "labels"),
    ({"codec": "compact", "labels": ["others", "a b"]}, ValueError, "labels[1]"),
    ({"codec": "compact", "labels": ["others", "none"]}, ValueError, "none"),
    ({"codec": "compact", "labels": ["others", "crack", "Crack"]}, ValueError, "duplicate"),
    ({"codec": "rle", "labels": ["others", "a|b"]}, ValueError, "labels[1]"),
    ({"codec": "compact", "background": 1}, ValueError, "background"),
    ({"codec": "compact", "coverage": 0}, ValueError, "coverage"),
    ({"codec": "compact", "colour": "red"}, ValueError, "colour"),
    ({"grid": 16}, ValueError, "codec"),
    ("compact", TypeError, "mapping"),
])
def test_codec_from_spec_errors_name_the_field(spec, error, word):
    with pytest.raises(error, match=word.replace("[", r"\[").replace("|", r"\|")):
        tam.codec_from_spec(spec)


def test_bad_arguments_are_typed_errors():
    c = tam.Codec("compact", grid=4)
    with pytest.raises(ValueError, match="grid must have shape"):
        c.encode(np.zeros((5, 5), np.uint8))
    with pytest.raises(ValueError, match="has no label"):
        c.encode(np.full((4, 4), 7, np.uint8))
    with pytest.raises(TypeError, match="grid"):
        c.encode([[0] * 4] * 4)
    with pytest.raises(TypeError, match="text"):
        c.decode(None)
    with pytest.raises(TypeError, match="mask"):
        tam.mask_to_grid(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="0..255"):
        tam.mask_to_grid(np.full((4, 4), 300, np.int32))
    with pytest.raises(ValueError, match="2-D"):
        tam.grid_to_mask(np.zeros((4, 4, 1), np.uint8), (8, 8))
    with pytest.raises(TypeError, match="size"):
        tam.grid_to_mask(np.zeros((4, 4), np.uint8), 8)
    with pytest.raises(ValueError, match="connectivity"):
        tam.components(np.zeros((4, 4), np.uint8), connectivity=6)


# ---- frame resolution ----------------------------------------------------------------------------------------------

def _nearest_reference(grid, h, w):
    gh, gw = grid.shape
    return grid[(np.arange(h) * gh) // h][:, (np.arange(w) * gw) // w]


def _bilinear_reference(grid, h, w):
    def axis(n_out, n_in):
        s = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        i0 = np.floor(s).astype(int)
        return i0, np.minimum(i0 + 1, n_in - 1), s - i0
    f = (grid != 0).astype(np.float64)
    y0, y1, wy = axis(h, grid.shape[0])
    x0, x1, wx = axis(w, grid.shape[1])
    rows = f[:, x0] * (1 - wx) + f[:, x1] * wx
    return rows[y0] * (1 - wy)[:, None] + rows[y1] * wy[:, None]


@FAST
@given(grid=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=20),
                       elements=st.integers(0, 3)),
       h=st.integers(1, 90), w=st.integers(1, 90))
def test_upsampling_matches_numpy_references(grid, h, w):
    labels = tam.grid_to_labels(grid, (h, w))
    assert np.array_equal(labels, _nearest_reference(grid, h, w))
    mask = tam.grid_to_mask(grid, (h, w))
    assert mask.dtype == np.bool_ and np.array_equal(mask, labels != 0)
    smooth = tam.grid_to_mask(grid, (h, w), smooth=True)
    soft = _bilinear_reference(grid, h, w)
    clear = np.abs(soft - 0.5) > 1e-4  # exact 0.5 ties may round either way in float32
    assert np.array_equal(smooth[clear], (soft >= 0.5)[clear])


def test_smooth_rounds_off_a_square():
    g = np.zeros((16, 16), np.uint8)
    g[4:8, 4:8] = 1
    hard, soft = tam.grid_to_mask(g, (160, 160)), tam.grid_to_mask(g, (160, 160), smooth=True)
    assert hard[40, 40] and not soft[40, 40]          # the corner is cut
    assert soft[60, 60] and soft[41:79, 60].all()     # the middle stays
    assert abs(int(soft.sum()) - int(hard.sum())) < 0.15 * hard.sum()


def test_upsample_1080p_shape_and_content():
    g = np.zeros((16, 16), np.uint8)
    g[3, 4:8] = 1
    m = tam.grid_to_mask(g, (1080, 1920))
    assert m.shape == (1080, 1920)
    ys, xs = np.nonzero(m)
    # row 3 of 16 covers y in [ceil(3*1080/16), ceil(4*1080/16)) = [203, 270); columns 4..7 -> x in [480, 960)
    assert (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1) == (203, 270, 480, 960)


def test_mask_to_grid_coverage_and_majority():
    m = np.zeros((32, 32), np.uint8)          # 2x2 pixels per cell on a 16-grid: 4 pixels per cell
    m[0, 0] = 1                                # cell (0,0): 1 of 4 = 25%
    m[0, 2:4] = 2
    m[1, 2] = 3                                # cell (0,1): label 2 has 2 pixels, label 3 has 1 -> 2 wins
    g = tam.mask_to_grid(m, 16, coverage=0.25)
    assert g[0, 0] == 1 and g[0, 1] == 2 and g.sum() == 3
    assert tam.mask_to_grid(m, 16, coverage=0.3)[0, 0] == 0
    assert tam.mask_to_grid(m.astype(bool), 16, coverage=0.5)[0, 1] == 1


@FAST
@given(grid=hnp.arrays(np.uint8, st.tuples(st.integers(1, 16)).map(lambda t: (t[0], t[0])),
                       elements=st.integers(0, 3)),
       h=st.integers(16, 70), w=st.integers(16, 70), coverage=st.floats(0.01, 1.0))
def test_mask_to_grid_inverts_nearest_upsampling(grid, h, w, coverage):
    labels = tam.grid_to_labels(grid, (h, w))
    assert np.array_equal(tam.mask_to_grid(labels, grid.shape[0], coverage), grid)


@st.composite
def label_images(draw):
    shape = draw(st.tuples(st.integers(1, 40), st.integers(1, 40)))
    img = draw(hnp.arrays(np.uint8, shape, elements=st.integers(0, 2)))
    return img


@FAST
@given(img=label_images(), connectivity=st.sampled_from([4, 8]))
def test_components_match_skimage(img, connectivity):
    measure = pytest.importorskip("skimage.measure", reason="scikit-image is the reference (extra 'test')")
    ref = set()
    for lab in (1, 2):
        cc = measure.label(img == lab, connectivity=1 if connectivity == 4 else 2)
        for region in measure.regionprops(cc):
            y0, x0, y1, x1 = region.bbox
            ref.add((lab, (x0, y0, x1, y1), int(region.area)))
    got = {(c.label, c.box, c.pixels) for c in tam.components(img, connectivity=connectivity)}
    assert got == ref
    assert len(tam.components(img, connectivity=connectivity)) == len(ref)


@FAST
@given(grid=hnp.arrays(np.uint8, (16, 16), elements=st.sampled_from([0, 0, 0, 1, 2])),
       h=st.integers(16, 120), w=st.integers(16, 120))
def test_grid_components_equal_frame_components(grid, h, w):
    on_grid = tam.components(grid, (h, w))
    on_frame = tam.components(tam.grid_to_labels(grid, (h, w)))
    assert on_grid == on_frame
    assert tam.boxes(grid, (h, w)) == [c.box for c in on_frame]


def test_components_min_area_and_area_fraction():
    g = np.zeros((16, 16), np.uint8)
    g[0:4, 0:4] = 1      # 16 cells = 1/16 of the frame
    g[10, 10] = 1        # 1 cell
    comps = tam.components(g, (160, 160))
    assert [c.area for c in comps] == [1 / 16, 1 / 256]
    assert comps[0].box == (0, 0, 40, 40)
    assert len(tam.components(g, (160, 160), min_area=0.01)) == 1


# ---- token economy with the real Qwen2.5 tokenizer -----------------------------------------------------------------

def test_compact_token_economy(qwen_tokenizer_path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(qwen_tokenizer_path))
    count = lambda s: len(tok.encode(s, add_special_tokens=False).ids)  # noqa: E731
    c = tam.Codec("compact")
    assert count(c.encode(np.zeros((16, 16), np.uint8))) == 1
    g = np.zeros((16, 16), np.uint8)
    g[5:9, 6:10] = 1                       # a 4x4 blob: 4 rows
    assert count(c.encode(g)) <= 4 * 3
    rle = tam.Codec("rle").encode(g)
    assert count(c.encode(g)) * 5 < count(rle)
