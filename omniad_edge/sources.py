"""Frame sources: a video file, a camera, a stream or a folder of images -> SourceFrame, one by one.

    from omniad_edge.sources import open_source
    with open_source("line3.avi") as source:          # or 0 (camera), "rtsp://...", "v4l2src ! ... ! appsink", "dir/"
        for frame in source:                          # SourceFrame: .image (HxWx3 uint8 RGB), .index, .name, .timestamp
            inspector.run(frame.image)
    source.dropped                                    # frames a "latest" source skipped because the consumer was busy

Video, cameras and streams go through `cv2.VideoCapture` (extra `camera`: opencv-python-headless, imported on first
use); folders need only Pillow. policy="every" hands over every frame (reading waits for the consumer);
policy="latest" runs a reader thread that keeps only the newest frame and counts the ones it overwrote, so a slow
consumer always inspects the present. A live source (camera, stream, pipeline) that stops delivering is reopened with
exponential backoff and a logged warning; frame indices keep counting across reconnects, so frames from before and
after never share a number. A source that cannot be opened raises SourceError; a truncated or corrupt video ends
where its readable frames end, with a warning.

A source object is iterated by one consumer; each source owns its capture and reader thread, nothing is shared
between sources.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .errors import FrameError, OmniADError

log = logging.getLogger(__name__)

CAMERA_HINT = "video, camera and stream sources need OpenCV: pip install omniad-edge[camera]"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
POLICIES = ("every", "latest")
# cv2.CAP_PROP_* values (fixed across OpenCV versions), so injected captures need no cv2
_CAP_PROP_POS_MSEC, _CAP_PROP_FPS, _CAP_PROP_FRAME_COUNT = 0, 5, 7
_STREAM_URL = re.compile(r"^(rtsp|rtsps|rtmp|http|https|udp|tcp|srt)://", re.IGNORECASE)


class SourceError(OmniADError, OSError):
    """A frame source cannot be opened or read (missing file, no images, unreachable camera, missing extra)."""


@dataclass(frozen=True)
class SourceFrame:
    """One frame from a source. timestamp: seconds into a video file, capture time (time.time()) for live
    sources, modification time for image files."""

    image: np.ndarray  # HxWx3 uint8 RGB
    index: int  # frame number in the source (counts dropped frames too)
    name: str  # file name, or "frame 12"
    timestamp: float


def _cv2():
    try:
        import cv2
    except ImportError as exc:
        raise SourceError(f"{CAMERA_HINT} ({exc})") from None
    return cv2


class _Source:
    """Common part: pacing (fps), the drop counter, close() and the context manager."""

    def __init__(self, fps: float | None):
        if fps is not None and not fps > 0:
            raise SourceError(f"fps must be positive, got {fps!r}")
        self.fps = fps
        self.dropped = 0
        self._closed = threading.Event()

    def _frames(self) -> Iterator[SourceFrame]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __iter__(self) -> Iterator[SourceFrame]:
        period = 1.0 / self.fps if self.fps else 0.0
        due = time.monotonic()
        for frame in self._frames():
            if period:
                wait = due - time.monotonic()
                if wait > 0 and self._closed.wait(wait):
                    return
                # a consumer slower than fps is not made to catch up in a burst
                due = max(due, time.monotonic() - period) + period
            yield frame

    def close(self) -> None:
        self._closed.set()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VideoSource(_Source):
    """A video file, camera index, stream URL or GStreamer pipeline, read with cv2.VideoCapture.

    policy: "every" (each frame, in order) or "latest" (newest frame wins; `dropped` counts the others). A video file
    read with "latest" is played at its own frame rate, as a camera would deliver it.
    live: reopen when the source stops delivering (default: True for cameras, URLs and pipelines, False for files).
    reconnect_delay / max_reconnect_delay: backoff between reopen attempts (doubling); max_reconnects: give up with
    SourceError after that many failed attempts in a row (None: never give up).
    capture_factory(target, api_preference) -> a cv2.VideoCapture-like object (isOpened, read, get, release).
    """

    def __init__(self, target, *, policy: str = "every", fps: float | None = None, live: bool | None = None,
                 reconnect_delay: float = 0.5, max_reconnect_delay: float = 10.0, max_reconnects: int | None = None,
                 capture_factory: Callable | None = None):
        super().__init__(fps)
        if policy not in POLICIES:
            raise SourceError(f"policy must be one of {list(POLICIES)}, got {policy!r}")
        self.policy = policy
        self.target, self.kind = _classify(target)
        self.live = self.kind != "file" if live is None else bool(live)
        self.reconnect_delay = reconnect_delay
        self.max_reconnect_delay = max_reconnect_delay
        self.max_reconnects = max_reconnects
        if capture_factory is None:
            cv2 = _cv2()
            capture_factory = cv2.VideoCapture
            self._api = cv2.CAP_GSTREAMER if self.kind == "pipeline" else cv2.CAP_ANY
        else:
            self._api = 0
        self._factory = capture_factory
        self._capture = self._open()
        if self._capture is None:
            raise SourceError(f"cannot open {self.describe()}{self._open_hint()}")
        self._frame_count = int(self._get(_CAP_PROP_FRAME_COUNT) or 0)
        self._video_fps = self._get(_CAP_PROP_FPS)
        self._reader: threading.Thread | None = None

    def describe(self) -> str:
        return {"file": "video file", "camera": "camera", "url": "stream", "pipeline": "GStreamer pipeline"}[
            self.kind] + f" {self.target!r}"

    def _open_hint(self) -> str:
        if self.kind == "file":
            return " (corrupt, truncated before its first frame, or a format this OpenCV build cannot decode)"
        if self.kind == "pipeline":
            try:
                import cv2

                if not cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER):
                    return " (this OpenCV build has no GStreamer support)"
            except (ImportError, AttributeError):
                pass
        return " (not connected, busy, or unreachable)"

    def _open(self):
        try:
            capture = self._factory(self.target, self._api)
        except Exception as exc:  # cv2.error and friends: the source is simply not there
            log.debug("opening %s failed: %s", self.describe(), exc)
            return None
        if capture is None or not capture.isOpened():
            if capture is not None:
                capture.release()
            return None
        return capture

    def _get(self, prop: int) -> float:
        try:
            return float(self._capture.get(prop))
        except Exception:
            return 0.0

    def _read(self):
        try:
            ok, bgr = self._capture.read()
        except Exception as exc:
            log.debug("%s: read failed: %s", self.describe(), exc)
            return None
        if not ok or bgr is None or getattr(bgr, "size", 0) == 0:
            return None
        return bgr

    def _reconnect(self, after_index: int) -> bool:
        """Reopen with backoff until it works (True), close() is called or max_reconnects is spent (False/raise)."""
        self._capture.release()
        delay, attempt = self.reconnect_delay, 0
        while not self._closed.is_set():
            attempt += 1
            log.warning("%s stopped delivering after frame %d; reconnecting in %.1f s (attempt %d)",
                        self.describe(), after_index, delay, attempt)
            if self._closed.wait(delay):
                return False
            capture = self._open()
            if capture is not None:
                self._capture = capture
                log.warning("%s reconnected after %d attempt(s)", self.describe(), attempt)
                return True
            if self.max_reconnects is not None and attempt >= self.max_reconnects:
                raise SourceError(f"{self.describe()}: gave up after {attempt} failed reconnect attempts")
            delay = min(delay * 2, self.max_reconnect_delay)
        return False

    def _captured(self) -> Iterator[SourceFrame]:
        """Every frame the capture delivers, reconnecting live sources; ends at the end of a file."""
        index = 0
        while not self._closed.is_set():
            bgr = self._read()
            if bgr is None:
                if self.live:
                    self._reconnect(index - 1)  # False only when closed, which ends the loop
                    continue
                if self._frame_count and index < self._frame_count:
                    log.warning("%s ended after %d of %d frames (truncated or corrupt)", self.describe(), index,
                                self._frame_count)
                return
            if self.kind == "file" and not self.live:
                timestamp = index / self._video_fps if self._video_fps > 0 else self._get(_CAP_PROP_POS_MSEC) / 1e3
            else:
                timestamp = time.time()
            yield SourceFrame(_to_rgb(bgr), index, f"frame {index}", timestamp)
            index += 1

    def _frames(self) -> Iterator[SourceFrame]:
        try:
            if self.policy == "every":
                yield from self._captured()
            else:
                yield from self._newest()
        finally:
            self.close()

    def _newest(self) -> Iterator[SourceFrame]:
        slot: list = []  # the newest frame not yet taken
        done: list = []  # [exception or None] once the reader stops
        ready = threading.Condition()
        # a file stands in for a camera: delivered at its own rate, not as fast as it decodes
        period = 1.0 / self._video_fps if self.kind == "file" and self._video_fps > 0 else 0.0

        def read() -> None:
            due = time.monotonic()
            try:
                for frame in self._captured():
                    with ready:
                        if slot:
                            self.dropped += 1
                            slot[0] = frame
                        else:
                            slot.append(frame)
                        ready.notify()
                    if period:
                        due += period
                        self._closed.wait(max(0.0, due - time.monotonic()))
                result = None
            except Exception as exc:  # handed to the consumer, raised there
                result = exc
            with ready:
                done.append(result)
                ready.notify()

        self._reader = threading.Thread(target=read, name=f"omniad-source-{self.target}", daemon=True)
        self._reader.start()
        while True:
            with ready:
                while not slot and not done:
                    ready.wait(0.1)
                    if self._closed.is_set() and not slot:
                        return
                if slot:
                    frame = slot.pop()
                elif done[0] is not None:
                    raise done[0]
                else:
                    return
            yield frame

    def close(self) -> None:
        if self._closed.is_set() and self._reader is None:
            return
        super().close()
        reader, self._reader = self._reader, None
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=5.0)
        if reader is not None and reader.is_alive():  # stuck in a native read: releasing now could crash it
            log.warning("%s: reader thread still busy after close(); capture left to the garbage collector",
                        self.describe())
        elif getattr(self, "_capture", None) is not None:
            self._capture.release()

    def __repr__(self) -> str:
        return f"VideoSource({self.target!r}, policy={self.policy!r}, live={self.live})"


class FolderSource(_Source):
    """The images in a folder, in name order; with follow=True also the ones that appear later.

    An unreadable image is logged and skipped. With follow=True a file is taken once its size and modification time
    have held still for `settle` seconds, so a half-written file is never read; one still unreadable then is logged
    and retried when it changes again. follow=True ends on close() or after idle_timeout seconds without a new image
    (None: never).
    """

    def __init__(self, folder, *, follow: bool = False, fps: float | None = None, poll: float = 0.2,
                 settle: float = 0.3, idle_timeout: float | None = None):
        super().__init__(fps)
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise SourceError(f"folder {str(self.folder)!r} does not exist or is not a directory")
        self.follow = bool(follow)
        self.poll, self.settle, self.idle_timeout = poll, settle, idle_timeout
        if not self.follow and not self._listing():
            raise SourceError(f"folder {str(self.folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")

    def _listing(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir()
                      if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())

    def _frames(self) -> Iterator[SourceFrame]:
        from .frame import to_rgb

        done: set[str] = set()
        pending: dict[str, tuple] = {}  # name -> (size, mtime_ns, unchanged since, found unreadable)
        index, last_new = 0, time.monotonic()
        while not self._closed.is_set():
            for path in self._listing():
                if path.name in done:
                    continue
                try:
                    stat = path.stat()
                except OSError:  # removed while we looked
                    continue
                if self.follow:  # take a file only once it has held still (a writer may be mid-way)
                    key, now = (stat.st_size, stat.st_mtime_ns), time.monotonic()
                    seen = pending.get(path.name)
                    if seen is None or seen[:2] != key:
                        pending[path.name] = (*key, now, False)
                        continue
                    if seen[3] or now - seen[2] < self.settle:
                        continue
                try:
                    image = to_rgb(path)
                except FrameError as exc:
                    log.warning("skipping %s: %s", path, exc)
                    if self.follow:  # retried if the file changes again
                        pending[path.name] = (*pending[path.name][:3], True)
                    else:
                        done.add(path.name)
                    continue
                done.add(path.name)
                pending.pop(path.name, None)
                yield SourceFrame(image, index, path.name, stat.st_mtime)
                index += 1
                last_new = time.monotonic()
                if self._closed.is_set():
                    return
            if not self.follow:
                return
            if self.idle_timeout is not None and time.monotonic() - last_new > self.idle_timeout:
                return
            self._closed.wait(self.poll)

    def __repr__(self) -> str:
        return f"FolderSource({str(self.folder)!r}, follow={self.follow})"


def open_source(spec, *, policy: str = "every", fps: float | None = None, follow: bool = False,
                idle_timeout: float | None = None, **video_options) -> _Source:
    """A FolderSource for a directory, else a VideoSource (file, camera index or "0", URL, GStreamer pipeline)."""
    if isinstance(spec, (str, Path)) and Path(spec).is_dir():
        if policy != "every":
            raise SourceError("a folder is read image by image; policy='latest' applies to video sources")
        return FolderSource(spec, follow=follow, fps=fps, idle_timeout=idle_timeout)
    return VideoSource(spec, policy=policy, fps=fps, **video_options)


def _classify(target) -> tuple[object, str]:
    if isinstance(target, bool):
        raise SourceError(f"source must be a path, camera index, URL or pipeline, got {target!r}")
    if isinstance(target, int):
        return target, "camera"
    if isinstance(target, Path):
        target = str(target)
    if not isinstance(target, str) or not target.strip():
        raise SourceError(f"source must be a path, camera index, URL or pipeline, got {target!r}")
    if target.isdigit():
        return int(target), "camera"
    if _STREAM_URL.match(target):
        return target, "url"
    if "!" in target:  # gst-launch syntax: elements joined by "!"
        return target, "pipeline"
    path = Path(target)
    if not path.is_file():
        raise SourceError(f"video file {target!r} does not exist")
    return str(path), "file"


def _to_rgb(frame: np.ndarray) -> np.ndarray:
    """OpenCV's BGR (or grey, or BGRA) -> HxWx3 uint8 RGB."""
    if frame.dtype != np.uint8:
        frame = np.clip(frame, 0, 255).astype(np.uint8) if frame.dtype.kind == "f" else (frame >> 8).astype(np.uint8)
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim == 2:
        return np.ascontiguousarray(np.repeat(frame[:, :, None], 3, axis=2))
    return np.ascontiguousarray(frame[:, :, 2::-1])
