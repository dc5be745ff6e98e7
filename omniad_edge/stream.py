"""Pipelined inspection of several cameras: `Inspector.stream(sources)`.

    for result in inspector.stream([camera0, camera1]):        # one iterable of frames per camera
        if result.error is not None: ...                       # that frame (or that camera's source) failed
        else: result.camera, result.index, result.inspection

Per camera, a reader thread pulls frames from its source, converts and preprocesses them and runs the vision
encoder, and puts the encoded frames in a bounded queue (`prefetch` deep): when decoding falls behind, the reader
blocks, so a live source applies its own drop policy ("newest frame wins") and memory stays bounded. The decode loop
(in the thread iterating the stream) takes the oldest waiting frame of every camera that has one and decodes them in
one left-padded batch (`batch=True`, the default) or one by one (`batch=False`). So vision of upcoming frames
overlaps the decode of the current batch. On a 2-core CPU a batch of 2 or 4 frames costs 0.91-1.00x the time of as
many single decodes (benchmarks/results/stream.txt).

Order and identity: results of one camera come in the order of its frames; cameras interleave. Each `StreamResult`
names its camera (position in `sources`) and the frame (`index`, `name`, `timestamp`, `dropped` from the source item
when it has them, else the position in the iterable); frames of two cameras are never mixed, because every encoded
frame travels with its own record.

A source item is anything `Inspector.run` takes (ndarray, PIL image, path) or an object with `.image` (HxWx3 uint8
RGB) and optionally `.index`, `.name`, `.timestamp`, `.dropped` (frames skipped before it); a path item is named by
its path. A bad frame yields a
result with `error` (a FrameError) and the camera goes on; an exception raised by the source itself yields one
result with `error` and ends that camera only. Closing the generator (or leaving the loop, or an exception in the
consumer) stops the readers: sources with a `close()` are closed and the threads joined. `Inspector.close()` during
a stream waits for the batch being decoded; the stream then raises InspectorClosedError.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

from .errors import InspectorClosedError, OmniADError
from .frame import to_rgb
from .inspection import Inspection

log = logging.getLogger("omniad_edge")

_END = object()  # a reader's last record: its source is exhausted or failed


class StreamError(OmniADError, ValueError):
    """Bad arguments to Inspector.stream (no sources, a source that is not iterable, a bad prefetch)."""


@dataclass
class StreamResult:
    """One frame of one camera: its inspection, or the error that kept it from one."""

    camera: int  # position of the source in `sources`
    index: int  # the source item's `.index`, else its position in the iterable (0-based)
    inspection: Inspection | None
    error: BaseException | None = None  # FrameError for a bad frame; the source's exception ends the camera
    name: str | None = None  # the source item's `.name` (file name, camera name), when it has one
    timestamp: float | None = None  # the source item's `.timestamp`, else when the frame was read (time.time())
    dropped: int = 0  # frames the source skipped before this one (its `.dropped`, newest-frame-wins policy)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self, *, mask: str = "rle") -> dict:
        """The frame's identity, then the inspection's fields (Inspection.to_dict) or "error"."""
        out = {"camera": self.camera, "index": self.index, "name": self.name, "timestamp": self.timestamp,
               "dropped": self.dropped}
        if self.error is not None:
            out["error"] = f"{type(self.error).__name__}: {self.error}"
        else:
            out.update(self.inspection.to_dict(mask=mask))
        return out


@dataclass
class _Encoded:
    result: StreamResult  # the record the decode fills in
    image: object | None  # inspector._Image, None when reading/encoding failed
    t0: float


class _Reader(threading.Thread):
    """Pulls one camera's frames, encodes them (preprocess + vision) and queues them, bounded."""

    def __init__(self, inspector, camera: int, source, prefetch: int, stop: threading.Event,
                 arrived: threading.Event):
        super().__init__(name=f"omniad-stream-camera{camera}", daemon=True)
        self.inspector, self.camera, self.source = inspector, camera, source
        self.stop, self.arrived = stop, arrived
        self.queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self.refused = False  # the Inspector was closed under this reader

    def _put(self, record) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(record, timeout=0.05)
            except queue.Full:
                continue
            self.arrived.set()
            return True
        return False

    def run(self) -> None:
        position = 0
        try:
            for item in self.source:
                if self.stop.is_set():
                    return
                t0 = time.perf_counter()
                frame, result = _unpack(item, self.camera, position)
                position += 1
                try:
                    with self.inspector._call():
                        image = self.inspector._encode(to_rgb(frame, color=self.inspector.color))
                except InspectorClosedError:
                    self.refused = True  # the decode loop reports it
                    return
                except Exception as exc:  # a bad frame: reported for this frame, the camera goes on
                    result.error = exc
                    image = None
                if not self._put(_Encoded(result, image, t0)):
                    return
        except Exception as exc:  # the source failed: reported once, this camera ends, the others go on
            log.warning("stream camera %d: source failed after %d frames: %s: %s", self.camera, position,
                        type(exc).__name__, exc)
            self._put(_Encoded(StreamResult(self.camera, position, None, error=exc, timestamp=time.time()),
                               None, time.perf_counter()))
        finally:
            self._put(_END)


def _unpack(item, camera: int, position: int) -> tuple[object, StreamResult]:
    """(frame, its result record) of a source item: a frame record (`.image` + identity) or a plain frame."""
    if hasattr(item, "image"):
        timestamp = getattr(item, "timestamp", None)
        return item.image, StreamResult(camera, int(getattr(item, "index", position)), None,
                                        name=getattr(item, "name", None),
                                        timestamp=float(timestamp) if timestamp is not None else time.time(),
                                        dropped=int(getattr(item, "dropped", 0) or 0))
    name = os.fspath(item) if isinstance(item, (str, os.PathLike)) else None  # a path names its frame
    return item, StreamResult(camera, position, None, name=name, timestamp=time.time())


def stream(inspector, sources: Sequence[Iterable], *, batch: bool = True, prefetch: int = 2,
           join_timeout: float = 5.0) -> Iterator[StreamResult]:
    """See the module docstring. batch: decode the frames of several cameras in one batch; prefetch: encoded
    frames queued per camera (>= 1)."""
    if isinstance(sources, (str, bytes)) or not isinstance(sources, Sequence) or not sources:
        raise StreamError("sources must be a non-empty list with one iterable of frames per camera")
    for camera, source in enumerate(sources):
        if not hasattr(source, "__iter__"):
            raise StreamError(f"source {camera} is not iterable: {type(source).__name__}")
    if not isinstance(prefetch, int) or isinstance(prefetch, bool) or prefetch < 1:
        raise StreamError(f"prefetch must be an int >= 1, got {prefetch!r}")
    return _run(inspector, list(sources), batch, prefetch, join_timeout)


def _run(inspector, sources, batch, prefetch, join_timeout) -> Iterator[StreamResult]:
    stop, arrived = threading.Event(), threading.Event()
    readers = [_Reader(inspector, camera, source, prefetch, stop, arrived) for camera, source in enumerate(sources)]
    with inspector._call():  # a closed Inspector refuses the stream before any thread starts
        for reader in readers:
            reader.start()
    live = list(readers)
    try:
        while live:
            ready, errors = _take(live, arrived)
            for record in errors:
                yield record.result
            if not ready:
                continue
            # each batch is one call: close() waits for it, not for the consumer; the next batch then raises
            with inspector._call():
                images = [r.image for r in ready]
                generations = inspector._detect(images) if batch else [g for image in images
                                                                       for g in inspector._detect([image])]
                for record, generation in zip(ready, generations):
                    record.result.inspection = inspector._inspection(record.image, generation, record.t0)
            for record in ready:
                yield record.result
        if any(reader.refused for reader in readers):  # close() ended cameras early: say so
            raise InspectorClosedError(f"this Inspector ({inspector.bundle.name}) was closed during the stream")
    finally:
        stop.set()
        for source in sources:
            close = getattr(source, "close", None)
            if callable(close):
                try:
                    close()
                except Exception as exc:  # closing is best effort: the stream is ending anyway
                    log.warning("stream: closing a source failed: %s", exc)
        for reader in (r for r in readers if r.ident is not None):
            reader.join(join_timeout)
            if reader.is_alive():
                log.warning("stream camera %d: its source did not return within %.1f s; left running",
                            reader.camera, join_timeout)


def _take(live: list, arrived: threading.Event) -> tuple[list[_Encoded], list[_Encoded]]:
    """The oldest waiting frame of each camera that has one (waits until at least one camera has something);
    -> (frames to decode, failed records). Cameras whose reader ended are removed from `live`."""
    ready, errors = [], []
    while not ready and not errors and live:
        arrived.clear()  # before the sweep: a frame queued after it sets the event again, so the wait returns
        for reader in list(live):
            try:
                record = reader.queue.get_nowait()
            except queue.Empty:
                continue
            if record is _END:
                live.remove(reader)
            elif record.image is None:
                errors.append(record)
            else:
                ready.append(record)
        if not ready and not errors and live:
            arrived.wait(0.1)
    return ready, errors
