"""`omniad-edge watch`: inspect the frames of a source as they come, one record per frame, and a summary.

    from omniad_edge.watch import watch
    summary = watch(inspector, open_source("line3.avi"), emit=print)      # emit(record) per frame
    summary.text()        # frames inspected, dropped, anomalous, median ms
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .errors import FrameError
from .inspection import Inspection
from .sources import FolderSource, SourceFrame


@dataclass
class WatchSummary:
    inspected: int = 0
    anomalous: int = 0
    failed: int = 0  # frames the Inspector refused (FrameError)
    dropped: int = 0  # frames the source skipped (policy "latest")
    total_ms: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.total_ms) if self.total_ms else None

    def text(self) -> str:
        median = "-" if self.median_ms is None else f"{self.median_ms:.1f} ms"
        return (f"{self.inspected} frames inspected, {self.dropped} dropped, {self.anomalous} anomalous, "
                f"{self.failed} failed, median {median} per frame")


def inspect_source(inspector, source) -> Iterator[tuple[SourceFrame, Inspection | FrameError]]:
    """Each frame of `source` with its Inspection, or the FrameError that refused it, in source order.
    The one place the frames meet the Inspector: a pipelined Inspector.stream can take over here."""
    for frame in source:
        try:
            yield frame, inspector.run(frame.image)
        except FrameError as exc:  # one bad frame does not stop the source
            yield frame, exc


def record(frame: SourceFrame, result: Inspection | FrameError) -> dict:
    """The JSON-able line of one frame: where it came from, then the verdict (or the error)."""
    head = {"frame": frame.index, "name": frame.name, "timestamp": round(frame.timestamp, 3)}
    if isinstance(result, FrameError):
        return {**head, "error": str(result)}
    body = result.to_dict(mask="none")
    body.pop("options")  # the same on every line
    return {**head, "verdict": "anomalous" if result.is_anomalous else "normal", **body}


def watch(inspector, source, emit: Callable[[dict], None], *, overlay_dir=None) -> WatchSummary:
    """Inspect every frame `source` yields; emit(record) for each; write overlays when overlay_dir is given.
    Closes the source at the end (also on KeyboardInterrupt, which propagates)."""
    from .visualize import save_overlay

    summary = WatchSummary()
    from_files = isinstance(source, FolderSource)  # overlays named after the image file, else the frame number
    try:
        for frame, result in inspect_source(inspector, source):
            line = record(frame, result)
            if isinstance(result, FrameError):
                summary.failed += 1
            else:
                summary.inspected += 1
                summary.anomalous += bool(result.is_anomalous)
                summary.total_ms.append(result.timings["total"])
                if overlay_dir is not None:
                    stem = Path(frame.name).stem if from_files else f"frame_{frame.index:06d}"
                    line["overlay"] = str(save_overlay(Path(overlay_dir) / f"{stem}_overlay.png", frame.image,
                                                       result))
            summary.dropped = source.dropped
            emit(line)
    finally:
        source.close()
        summary.dropped = source.dropped
    return summary
