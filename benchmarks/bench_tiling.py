"""Tiling on large frames with small defects: detection and cost, tiled vs untiled, in one run.

    python benchmarks/bench_tiling.py [--size 896] [--defect 24] [--frames 20] [--tiles auto,3] [--out FILE]

Embedded default engine (its bundle shrinks every frame to at most 224x224 pixels). Frames: synthetic parts
(omniad_edge.synth) drawn at --size x --size. An anomalous frame is its seed's defect-free frame with the defect's
pixels pasted back only inside a --defect x --defect pixel window around the defect (so the defect stays that small
in frame pixels, whatever the frame size; synth's own defects grow with the frame); normal frames are defect-free
frames of other seeds. Per way (untiled, then each tiling): detection rate (anomalous frames called anomalous),
false-positive rate, AUROC of the score, milliseconds per frame. Prints the load average.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def small_defect_frame(seed: int, size: int, window: int):
    """(frame, defect mask) with the seed's defect cut down to a window x window square around its centre."""
    from omniad_edge.synth import make_sample

    bad = make_sample(seed, size, anomalous=True)
    good = make_sample(seed, size, anomalous=False)
    ys, xs = np.nonzero(bad.mask)
    k = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))  # the defect pixel nearest its centroid
    y0 = int(np.clip(ys[k] - window // 2, 0, size - window))
    x0 = int(np.clip(xs[k] - window // 2, 0, size - window))
    keep = np.zeros_like(bad.mask)
    keep[y0:y0 + window, x0:x0 + window] = True
    keep &= bad.mask
    frame = np.where(keep[..., None], bad.image, good.image)
    return frame, keep


def auroc(scores, labels) -> float:
    """Probability that an anomalous frame scores above a normal one (ties count half)."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    pos, neg = scores[labels], scores[~labels]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=896)
    p.add_argument("--defect", type=int, default=24, help="side of the window the defect is cut to, in pixels")
    p.add_argument("--frames", type=int, default=20, help="anomalous frames, and as many normal ones")
    p.add_argument("--tiles", default="auto,3", help="comma-separated tilings: auto or n (n x n)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out")
    args = p.parse_args(argv)

    from omniad_edge import Inspector
    from omniad_edge.synth import make_sample

    ins = Inspector(mode="detect", threads=args.threads, warmup=True)
    frames, labels, defect_px = [], [], []
    for i in range(args.frames):
        frame, mask = small_defect_frame(2000 + i, args.size, args.defect)
        frames.append(frame)
        labels.append(True)
        defect_px.append(int(mask.sum()))
        frames.append(make_sample(3000 + i, args.size, anomalous=False).image)
        labels.append(False)
    labels = np.array(labels)
    ways = [("untiled", None)] + [(f"tiles {t}", t if t == "auto" else int(t)) for t in args.tiles.split(",")]
    lines = [f"bench_tiling: {args.frames} anomalous + {args.frames} normal synthetic frames of "
             f"{args.size}x{args.size}, defects cut to a {args.defect}x{args.defect} px window "
             f"(defect pixels: median {int(np.median(defect_px))}, min {min(defect_px)}, max {max(defect_px)}; "
             f"median {100 * np.median(defect_px) / args.size ** 2:.3f}% of the frame); bundle max pixels "
             f"{ins.bundle.preprocess['max_pixels']}; onnxruntime threads {args.threads}, {os.cpu_count()} CPUs "
             f"({platform.machine()})",
             f"load average before: {tuple(round(x, 2) for x in os.getloadavg())}",
             "| way | tiles per frame | detection rate | false positives | AUROC | ms per frame |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, tiles in ways:
        scores, verdicts, ms, count = [], [], [], 1
        for frame in frames:
            t0 = time.perf_counter()
            r = ins.run(frame, tiles=tiles)
            ms.append((time.perf_counter() - t0) * 1e3)
            scores.append(r.score)
            verdicts.append(r.is_anomalous)
            count = len(r.options.get("tiling", {}).get("tiles", [None]))
        verdicts = np.array(verdicts)
        lines.append(f"| {name} | {count} | {verdicts[labels].mean():.2f} | {verdicts[~labels].mean():.2f} | "
                     f"{auroc(scores, labels):.3f} | {np.median(ms):.0f} |")
        print(lines[-1], flush=True)
    lines.append(f"load average after: {tuple(round(x, 2) for x in os.getloadavg())}")
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")


if __name__ == "__main__":
    main()
