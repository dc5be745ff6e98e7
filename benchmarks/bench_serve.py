"""Served throughput on Ray Serve (1 and 2 replicas) against one local Inspector, in the same run.

    python benchmarks/bench_serve.py [--frames 64] [--clients 8] [--out benchmarks/results/serve-reference-fp16]

The same synthetic 224x224 frames (half anomalous) go through:
- local: one Inspector in this process, a plain run() loop (threads = all cores), frames already decoded;
- served: Client.inspect from `--clients` threads over HTTP (PNG bytes in, JSON out), replicas with one core and
  one ONNX Runtime thread each, Ray Serve batching concurrent requests onto run_batch.
Every served answer is checked against the local one (verdict, boxes) before any time is reported. Served figures
include HTTP, PNG decoding and the JSON round trip. Prints the load average before and after.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from omniad_edge import Inspector, __version__  # noqa: E402
from omniad_edge import serve  # noqa: E402
from omniad_edge.synth import make_sample  # noqa: E402


def png(rgb):
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def served(url, bodies, clients):
    """Frames/s with `clients` threads, each sending its share of the frames one request at a time."""
    answers, latencies = [None] * len(bodies), []
    barrier = threading.Barrier(clients + 1)

    def client(k):
        connection = serve.Client(url, timeout=120)
        barrier.wait()
        for i in range(k, len(bodies), clients):
            t0 = time.perf_counter()
            answers[i] = connection.inspect(bodies[i], mask="none")
            latencies.append((time.perf_counter() - t0) * 1e3)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    return answers, {"frames_per_s": len(bodies) / seconds, "latency_ms_p50": statistics.median(latencies),
                     "latency_ms_p90": float(np.percentile(latencies, 90)),
                     "mean_batch_size": statistics.mean(a["batch_size"] for a in answers)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve-reference-fp16"))
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    print(f"load average before: {load_before}", flush=True)

    frames = [make_sample(9500 + i, size=224, anomalous=i % 2 == 0).image for i in range(args.frames)]
    bodies = [png(f) for f in frames]
    local = Inspector(threads=os.cpu_count())
    for f in frames[:4]:
        local.run(f)  # warm-up
    t0 = time.perf_counter()
    expected = [local.run(f) for f in frames]
    local_fps = len(frames) / (time.perf_counter() - t0)
    print(f"local Inspector run() loop ({os.cpu_count()} threads): {local_fps:.1f} frames/s", flush=True)

    rows = {"local": {"frames_per_s": local_fps}}
    try:
        for replicas in (1, 2):
            url = serve.start(replicas=replicas, port=8765, max_batch_size=args.max_batch_size,
                              inspector_options={"threads": 1})
            served(url, bodies[:8], args.clients)  # warm-up (also waits out replica start)
            answers, row = served(url, bodies, args.clients)
            for answer, want in zip(answers, expected):
                assert answer["is_anomalous"] == want.is_anomalous, "served verdict differs from the local one"
                assert answer["boxes"] == [b.to_dict() for b in want.boxes], "served boxes differ"
            rows[f"served_{replicas}"] = row
            print(f"served, {replicas} replica(s), {args.clients} clients: {row['frames_per_s']:.1f} frames/s "
                  f"(p50 {row['latency_ms_p50']:.0f} ms, mean batch {row['mean_batch_size']:.2f})", flush=True)
    finally:
        serve.stop()
    load_after = os.getloadavg()
    print(f"load average after: {load_after}")
    ratio = rows["served_2"]["frames_per_s"] / local_fps
    print(f"2 replicas / local Inspector: {ratio:.2f}x")

    import ray

    result = {"frames": args.frames, "clients": args.clients, "max_batch_size": args.max_batch_size,
              "frame_size": [224, 224], "bundle": local.bundle.name, "rows": rows,
              "served_2_over_local": ratio, "load_before": load_before, "load_after": load_after,
              "cpus": os.cpu_count(), "machine": platform.platform(), "python": platform.python_version(),
              "omniad_edge": __version__, "ray": ray.__version__}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = [f"## Served throughput: {local.bundle.name}, {args.frames} frames of 224x224, {args.clients} clients",
             "", "| setup | frames/s | vs local | p50 latency ms | mean batch |", "| --- | ---: | ---: | ---: | ---: |",
             f"| local Inspector, run() loop, {os.cpu_count()} threads | {local_fps:.1f} | 1.00x | | |"]
    for replicas in (1, 2):
        row = rows[f"served_{replicas}"]
        lines.append(f"| Ray Serve, {replicas} replica(s) x 1 thread, HTTP + PNG | {row['frames_per_s']:.1f} | "
                     f"{row['frames_per_s'] / local_fps:.2f}x | {row['latency_ms_p50']:.0f} | "
                     f"{row['mean_batch_size']:.2f} |")
    lines += ["", f"- load average before {tuple(round(x, 2) for x in load_before)}, after "
              f"{tuple(round(x, 2) for x in load_after)} (a shared machine: other work may run)",
              f"- {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}, "
              f"omniad-edge {__version__}, ray {ray.__version__}"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
