"""Inspector.stream: several cameras, order per camera, identity of every result, errors per camera, shutdown,
backpressure (omniad_edge.stream)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest

from helpers.frames import make_frame

pytest.importorskip("omniad_edge._native", reason="the native sampler/codec module is not built "
                    "(python setup.py build_ext --inplace)")


@dataclass
class Item:  # what a frame source yields (omniad_edge.sources' contract)
    image: np.ndarray
    index: int
    name: str
    timestamp: float
    dropped: int = 0


@pytest.fixture(scope="module")
def inspector(tiny_bundle):
    from omniad_edge import Inspector

    return Inspector(tiny_bundle, mode="explain", threads=1, max_new_tokens=24)


def _cameras():
    sizes = [(64, 64), (90, 120), (120, 72)]
    return [[make_frame(h, w, seed=10 * c + i) for i in range(4)] for c, (h, w) in enumerate(sizes)]


@pytest.mark.parametrize("batch", [True, False])
def test_results_come_in_order_per_camera_and_match_run(inspector, batch):
    cameras = _cameras()
    expected = {(c, i): inspector.run(frame) for c, frames in enumerate(cameras) for i, frame in enumerate(frames)}
    results = list(inspector.stream(cameras, batch=batch))
    assert len(results) == sum(len(frames) for frames in cameras) and all(r.ok for r in results)
    for c in range(len(cameras)):
        assert [r.index for r in results if r.camera == c] == list(range(len(cameras[c])))
    for r in results:
        want = expected[(r.camera, r.index)]
        assert r.inspection.text == want.text and r.inspection.score == pytest.approx(want.score, abs=1e-5)
        assert r.inspection.mask.shape == cameras[r.camera][r.index].shape[:2]


def test_source_items_keep_their_identity(inspector):
    frames = [make_frame(64, 64, seed=s) for s in range(3)]
    source = [Item(frame, 100 + i, f"cam-a/{i}.png", 1000.0 + i, dropped=i) for i, frame in enumerate(frames)]
    plain = [frames[2], frames[0]]  # anything run() takes
    results = list(inspector.stream([source, plain]))
    a = [r for r in results if r.camera == 0]
    b = [r for r in results if r.camera == 1]
    assert [(r.index, r.name, r.timestamp, r.dropped) for r in a] == [
        (100, "cam-a/0.png", 1000.0, 0), (101, "cam-a/1.png", 1001.0, 1), (102, "cam-a/2.png", 1002.0, 2)]
    assert [r.index for r in b] == [0, 1] and b[0].name is None and b[0].timestamp > 0
    assert b[0].inspection.text == a[2].inspection.text  # same frame, same answer, whatever camera
    record = a[1].to_dict()
    assert (record["camera"], record["index"], record["name"], record["dropped"]) == (0, 101, "cam-a/1.png", 1)
    assert record["is_anomalous"] == a[1].inspection.is_anomalous


def test_a_failing_source_or_bad_frame_stays_with_its_camera(inspector):
    def broken():
        yield make_frame(64, 64, seed=1)
        raise OSError("camera unplugged")

    good = [make_frame(64, 64, seed=s) for s in range(4)]
    with_bad = [make_frame(64, 64, seed=5), np.zeros((1, 1, 3), np.uint8), make_frame(64, 64, seed=6)]
    results = list(inspector.stream([broken(), good, with_bad]))
    by_camera = {c: [r for r in results if r.camera == c] for c in range(3)}
    assert [r.ok for r in by_camera[0]] == [True, False]
    assert isinstance(by_camera[0][1].error, OSError) and "unplugged" in str(by_camera[0][1].error)
    assert [r.ok for r in by_camera[1]] == [True] * 4
    from omniad_edge.errors import FrameError

    assert [r.ok for r in by_camera[2]] == [True, False, True] and isinstance(by_camera[2][1].error, FrameError)
    assert "error" in by_camera[2][1].to_dict()


class Endless:
    """An endless live source: counts what was pulled; has close() like a camera."""

    def __init__(self, seed):
        self.frame = make_frame(64, 64, seed=seed)
        self.pulled = 0
        self.closed = False

    def __iter__(self):
        while not self.closed:
            self.pulled += 1
            yield self.frame


def _readers():
    return [t for t in threading.enumerate() if t.name.startswith("omniad-stream-camera") and t.is_alive()]


def test_closing_the_stream_stops_readers_and_closes_sources(inspector):
    sources = [Endless(1), Endless(2)]
    for s in sources:
        s.close = lambda s=s: setattr(s, "closed", True)
    stream = inspector.stream(sources, prefetch=2)
    got = [next(stream) for _ in range(3)]
    assert {r.camera for r in got} <= {0, 1}
    time.sleep(0.3)
    # backpressure: a reader is at most prefetch frames ahead (+1 in its hands, +1 being decoded)
    assert all(s.pulled <= len(got) + 2 + 2 for s in sources), [s.pulled for s in sources]
    stream.close()
    assert all(s.closed for s in sources)
    assert not _readers()


def test_bad_arguments_and_a_closed_inspector(tiny_bundle):
    from omniad_edge import Inspector, InspectorClosedError
    from omniad_edge.stream import StreamError

    ins = Inspector(tiny_bundle, mode="detect", threads=1, max_new_tokens=8)
    for bad in ([], "video.mp4", [5]):
        with pytest.raises(StreamError):
            ins.stream(bad)
    with pytest.raises(StreamError, match="prefetch"):
        ins.stream([[make_frame(64, 64)]], prefetch=0)
    ins.close()
    with pytest.raises(InspectorClosedError):
        ins.stream([[make_frame(64, 64)]])


def test_close_during_a_stream_ends_it_with_a_typed_error(tiny_bundle):
    from omniad_edge import Inspector, InspectorClosedError

    ins = Inspector(tiny_bundle, mode="detect", threads=1, max_new_tokens=8)
    stream = ins.stream([Endless(1), Endless(2)])
    assert next(stream).ok
    ins.close()  # from the consumer's own thread, between two results: must not wait for the whole stream
    with pytest.raises(InspectorClosedError):
        for _ in stream:
            pass
    assert not _readers()


def test_paths_and_pil_images_are_frames_too(inspector, tmp_path):
    from PIL import Image

    frame = make_frame(64, 64, seed=9)
    path = tmp_path / "part.png"
    Image.fromarray(frame).save(path)
    results = list(inspector.stream([[str(path), path], [Image.fromarray(frame)]]))
    assert all(r.ok for r in results), [r.error for r in results]
    paths = [r for r in results if r.camera == 0]
    assert [(r.index, r.name) for r in paths] == [(0, str(path)), (1, str(path))]
    assert len({r.inspection.text for r in results}) == 1  # one frame, three spellings


def test_frame_sources_from_sources_py_plug_in(inspector, tmp_path):
    # the contract with omniad_edge.sources: SourceFrame records and a close() the stream calls at the end
    from PIL import Image

    from omniad_edge.sources import open_source

    folders = []
    for c in range(2):
        folder = tmp_path / f"cam{c}"
        folder.mkdir()
        for i in range(3):
            Image.fromarray(make_frame(64, 64 + 8 * c, seed=10 * c + i)).save(folder / f"f{i}.png")
        folders.append(folder)
    sources = [open_source(folder) for folder in folders]
    results = list(inspector.stream(sources))
    assert all(r.ok for r in results)
    for c, folder in enumerate(folders):
        mine = [r for r in results if r.camera == c]
        assert [(r.index, r.name) for r in mine] == [(i, f"f{i}.png") for i in range(3)]
        for r in mine:
            assert r.inspection.text == inspector.run(folder / r.name).text
