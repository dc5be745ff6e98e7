"""Frame sources on real MJPG .avi files written with OpenCV, folders of images, and injected captures for
disconnects. cv2 is imported unconditionally: the README's test command installs the `camera` extra."""
import logging
import sys
import threading
import time

import cv2
import numpy as np
import pytest
from PIL import Image

from omniad_edge.sources import FolderSource, SourceError, SourceFrame, VideoSource, open_source


def write_video(path, n, fps=25.0, size=(64, 48), value=lambda i: 10 + 8 * i):
    """n frames, frame i uniformly grey at value(i) except a pure red square (BGR order for the writer)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    for i in range(n):
        bgr = np.full((size[1], size[0], 3), value(i), np.uint8)
        bgr[:16, :16] = (0, 0, 255)
        writer.write(bgr)
    writer.release()
    return path


def grey(frame: SourceFrame) -> float:
    return float(frame.image[24:, 24:].mean())


def test_video_file_in_order_as_rgb(tmp_path):
    path = write_video(tmp_path / "line.avi", 12, fps=25.0)
    with VideoSource(path) as source:
        frames = list(source)
    assert [f.index for f in frames] == list(range(12))
    assert [f.name for f in frames[:2]] == ["frame 0", "frame 1"]
    assert [f.timestamp for f in frames[:3]] == pytest.approx([0.0, 0.04, 0.08])
    first = frames[0].image
    assert first.shape == (48, 64, 3) and first.dtype == np.uint8 and first.flags.c_contiguous
    red = first[2:14, 2:14].mean(axis=(0, 1))
    assert red[0] > 200 and red[1] < 40 and red[2] < 40  # BGR from OpenCV came out as RGB
    values = [grey(f) for f in frames]
    assert values == pytest.approx([10 + 8 * i for i in range(12)], abs=3)
    assert source.dropped == 0 and source.closed


def test_missing_file_and_bad_arguments(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        VideoSource(tmp_path / "nope.avi")
    with pytest.raises(SourceError, match="policy"):
        VideoSource(write_video(tmp_path / "a.avi", 2), policy="oldest")
    with pytest.raises(SourceError, match="fps"):
        VideoSource(tmp_path / "a.avi", fps=0)
    with pytest.raises(OSError):  # SourceError is an OSError too
        open_source(str(tmp_path / "missing.mp4"))


def test_corrupt_video_cannot_be_opened(tmp_path):
    bad = tmp_path / "garbage.avi"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, np.uint8).tobytes())
    with pytest.raises(SourceError, match="cannot open video file .*corrupt"):
        VideoSource(bad)


def test_truncated_video_ends_cleanly_with_a_warning(tmp_path, caplog):
    data = write_video(tmp_path / "full.avi", 20).read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[:int(len(data) * 0.85)])
    with caplog.at_level(logging.WARNING, "omniad_edge.sources"):
        frames = list(VideoSource(cut))
    assert 0 < len(frames) < 20
    assert [f.index for f in frames] == list(range(len(frames)))
    assert f"ended after {len(frames)} of 20 frames (truncated or corrupt)" in caplog.text


def test_missing_opencv_names_the_extra(tmp_path, monkeypatch):
    path = write_video(tmp_path / "a.avi", 2)
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(SourceError, match=r"pip install omniad-edge\[camera\]"):
        VideoSource(path)


def _png(path, value, size=(40, 32)):
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)
    return path


def test_folder_in_name_order_and_bad_images_skipped(tmp_path, caplog):
    _png(tmp_path / "b.png", 20)
    _png(tmp_path / "a.png", 10)
    (tmp_path / "c.png").write_bytes(b"not a png")
    (tmp_path / "notes.txt").write_text("ignored")
    with caplog.at_level(logging.WARNING, "omniad_edge.sources"):
        frames = list(open_source(tmp_path))
    assert [(f.index, f.name, int(f.image.mean())) for f in frames] == [(0, "a.png", 10), (1, "b.png", 20)]
    assert "skipping" in caplog.text and "c.png" in caplog.text


def test_folder_without_images_is_an_error(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(SourceError, match="holds no images"):
        FolderSource(tmp_path)
    with pytest.raises(SourceError, match="not a directory"):
        FolderSource(tmp_path / "readme.txt")


def test_folder_follow_takes_new_files_but_never_half_written_ones(tmp_path, caplog):
    _png(tmp_path / "000.png", 10)
    full = _png(tmp_path.parent / "late_full.png", 200, size=(64, 64)).read_bytes()

    def writer():
        time.sleep(0.3)
        with open(tmp_path / "001.png", "wb") as f:  # half now, the rest after the source could have settled
            f.write(full[:len(full) // 2])
            f.flush()
            time.sleep(0.8)
            f.write(full[len(full) // 2:])

    thread = threading.Thread(target=writer)
    thread.start()
    with caplog.at_level(logging.WARNING, "omniad_edge.sources"):
        with FolderSource(tmp_path, follow=True, poll=0.05, settle=0.2, idle_timeout=3.0) as source:
            frames = list(source)
    thread.join()
    assert "001.png" in caplog.text  # the half file was seen (settled, unreadable) and left for later
    assert [f.name for f in frames] == ["000.png", "001.png"]
    assert frames[1].image.shape == (64, 64, 3) and int(frames[1].image.mean()) == 200


def test_latest_policy_counts_the_frames_a_slow_consumer_missed(tmp_path):
    path = write_video(tmp_path / "fast.avi", 30, fps=50.0)
    source = VideoSource(path, policy="latest")
    taken = []
    for frame in source:
        taken.append(frame.index)
        time.sleep(0.12)  # six camera frames per inspection
    assert taken == sorted(set(taken)) and taken[-1] == 29  # in order, the last frame is never lost
    assert len(taken) + source.dropped == 30
    assert source.dropped >= 10


def test_two_cameras_read_at_once_never_mix_frames(tmp_path):
    sources = [VideoSource(write_video(tmp_path / f"cam{k}.avi", 20, fps=100.0, value=lambda i, k=k: 40 + 160 * k),
                           policy="latest") for k in range(2)]
    seen = [[], []]

    def consume(k):
        for frame in sources[k]:
            seen[k].append((frame.index, round(grey(frame))))
            time.sleep(0.01)

    threads = [threading.Thread(target=consume, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(2):
        assert seen[k] and all(abs(value - (40 + 160 * k)) <= 3 for _, value in seen[k])
        assert [i for i, _ in seen[k]] == sorted({i for i, _ in seen[k]}) and seen[k][-1][0] == 19
        assert len(seen[k]) + sources[k].dropped == 20


class FakeCapture:
    """A cv2.VideoCapture stand-in: delivers `values` as frames, then fails like a camera that went away."""

    def __init__(self, values, opened=True):
        self.values, self.opened, self.released = list(values), opened, False

    def isOpened(self):
        return self.opened

    def read(self):
        if self.released or not self.values:
            return False, None
        return True, np.full((32, 32, 3), self.values.pop(0), np.uint8)

    def get(self, prop):
        return 0.0

    def release(self):
        self.released = True


def factory(*captures):
    queue = list(captures)
    return lambda target, api: queue.pop(0) if queue else FakeCapture([], opened=False)


@pytest.mark.parametrize("policy", ["every", "latest"])
def test_camera_that_disconnects_is_reopened_with_backoff(policy, caplog):
    captures = factory(FakeCapture([1, 2, 3]), FakeCapture([], opened=False), FakeCapture([4, 5]))
    source = VideoSource(0, policy=policy, reconnect_delay=0.01, max_reconnects=3, capture_factory=captures)
    got = []
    with caplog.at_level(logging.WARNING, "omniad_edge.sources"):
        with pytest.raises(SourceError, match="gave up after 3 failed reconnect attempts"):
            for frame in source:
                got.append((frame.index, int(frame.image[0, 0, 0])))
                if policy == "latest":
                    time.sleep(0.05)  # let the reader run ahead; drops are counted, never reordered
    assert got == sorted(got) and all(index == value - 1 for index, value in got)
    assert len(got) + source.dropped == 5
    assert "camera 0 stopped delivering after frame 2; reconnecting in 0.0 s (attempt 1)" in caplog.text
    assert "camera 0 reconnected after 2 attempt(s)" in caplog.text


def test_camera_that_never_opens_is_an_error():
    with pytest.raises(SourceError, match="cannot open camera 3"):
        VideoSource(3, capture_factory=factory(FakeCapture([], opened=False)))
    with pytest.raises(SourceError, match="cannot open camera 3"):
        VideoSource("3", capture_factory=lambda target, api: (_ for _ in ()).throw(cv2.error("no device")))


def test_live_video_file_replaced_while_reading(tmp_path, caplog):
    """A real capture that goes away (end of file) and comes back with other content: no frame of one mixes with
    the other, indices keep counting."""
    path = write_video(tmp_path / "cam.avi", 5, value=lambda i: 40)
    source = VideoSource(path, live=True, reconnect_delay=0.02)
    got = []
    with caplog.at_level(logging.WARNING, "omniad_edge.sources"):
        for frame in source:
            got.append((frame.index, round(grey(frame))))
            if frame.index == 4:  # the consumer reads in its own thread with policy "every": swap the file now
                write_video(tmp_path / "next.avi", 5, value=lambda i: 200).replace(path)
            if frame.index == 9:
                source.close()
    assert [i for i, _ in got] == list(range(10))
    assert all(abs(v - 40) <= 3 for _, v in got[:5]) and all(abs(v - 200) <= 3 for _, v in got[5:])
    assert "reconnected" in caplog.text


def test_fps_paces_reading(tmp_path):
    path = write_video(tmp_path / "a.avi", 6)
    start = time.monotonic()
    frames = list(VideoSource(path, fps=20))
    assert len(frames) == 6 and time.monotonic() - start >= 5 / 20


def test_string_forms_of_a_source():
    with pytest.raises(SourceError, match="cannot open stream 'rtsp://127.0.0.1:9/none'"):
        VideoSource("rtsp://127.0.0.1:9/none", capture_factory=factory(FakeCapture([], opened=False)))
    with pytest.raises(SourceError, match="GStreamer pipeline"):
        VideoSource("videotestsrc ! appsink", capture_factory=factory(FakeCapture([], opened=False)))
    with pytest.raises(SourceError, match="camera index, URL or pipeline"):
        VideoSource("   ")
