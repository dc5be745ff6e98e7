"""Frames per second of Inspector.stream for 1, 2 and 4 cameras against a serial run() loop, in the same run.

    python benchmarks/bench_stream.py [--frames 12] [--rounds 3] [--threads 2] [--mode detect] [--out FILE]

Embedded default engine. Every camera gets --frames synthetic parts (omniad_edge.synth, 224x224); the serial loop
inspects the same frames one by one with Inspector.run. Per round and camera count: serial, stream(batch=False)
(pipelining only: vision of the next frames overlaps the decode) and stream(batch=True) (the cameras' frames also
share one decode batch). Prints the median frames/s over rounds, the ratio to serial, and the load average.
First, the question behind stream's batch=True default: per frame, run_batch of n frames against n run() calls.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--frames", type=int, default=12, help="frames per camera")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    p.add_argument("--mode", default="detect", choices=["detect", "explain"])
    p.add_argument("--cameras", default="1,2,4")
    p.add_argument("--out", help="also write the report here")
    args = p.parse_args(argv)

    from omniad_edge import Inspector
    from omniad_edge.synth import make_sample

    counts = [int(c) for c in args.cameras.split(",")]
    frames = [make_sample(1000 + i, 224).image for i in range(max(counts) * args.frames)]
    ins = Inspector(mode=args.mode, threads=args.threads, warmup=True)
    lines = [f"bench_stream: mode {args.mode}, {args.frames} frames per camera, onnxruntime threads {args.threads}, "
             f"{args.rounds} rounds, {os.cpu_count()} CPUs ({platform.machine()}), provider {ins.backend.provider}",
             f"load average before: {tuple(round(x, 2) for x in os.getloadavg())}"]
    batch_ratio: dict[int, list[float]] = {}
    for r in range(args.rounds):
        for n in [c for c in counts if c > 1]:
            t0 = time.perf_counter()
            for f in frames[:n]:
                ins.run(f)
            t1 = time.perf_counter()
            ins.run_batch(frames[:n])
            batch_ratio.setdefault(n, []).append((time.perf_counter() - t1) / (t1 - t0))
    lines.append("run_batch(n) time / n x run() time (median over rounds): " + ", ".join(
        f"n={n}: {statistics.median(v):.2f}" for n, v in batch_ratio.items()))
    rates: dict[tuple[int, str], list[float]] = {}
    anomalous: dict[tuple[int, str], int] = {}
    for r in range(args.rounds):
        for n in counts:
            cams = [frames[c * args.frames:(c + 1) * args.frames] for c in range(n)]
            ways = ["serial", "stream", "stream+batch"]
            if r % 2:
                ways.reverse()  # drift on a shared machine hits every way alike
            for way in ways:
                t0 = time.perf_counter()
                if way == "serial":
                    verdicts = [ins.run(f).is_anomalous for cam in cams for f in cam]
                else:
                    results = list(ins.stream(cams, batch=way == "stream+batch"))
                    assert all(res.ok for res in results) and len(results) == n * args.frames
                    verdicts = [res.inspection.is_anomalous for res in results]
                rates.setdefault((n, way), []).append(n * args.frames / (time.perf_counter() - t0))
                anomalous[(n, way)] = sum(verdicts)
    lines.append("| cameras | serial run() frames/s | stream frames/s | x serial | stream+batch frames/s | x serial |")
    lines.append("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in counts:
        serial = statistics.median(rates[(n, "serial")])
        plain = statistics.median(rates[(n, "stream")])
        batched = statistics.median(rates[(n, "stream+batch")])
        lines.append(f"| {n} | {serial:.1f} | {plain:.1f} | {plain / serial:.2f} | {batched:.1f} | "
                     f"{batched / serial:.2f} |")
    lines.append("anomalous verdicts per way (same frames): " + ", ".join(
        f"{n} cam {way}: {anomalous[(n, way)]}" for n in counts for way in ("serial", "stream", "stream+batch")))
    lines.append(f"load average after: {tuple(round(x, 2) for x in os.getloadavg())}")
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")


if __name__ == "__main__":
    main()
