"""Runtime figures on one bundle: per-stage timings, prefix-cache saving, per-token host overhead.

    nice -n 10 python benchmarks/bench_runtime.py BUNDLE_DIR [--runs 7] [--threads 1] [--tokens 32]

Prints medians over --runs runs (after one warm-up run):
- per-stage ms of Inspector.run (preprocess, vision, prefill, decode, postprocess, total), explain mode;
- prefix cache: the same Inspector settings with one reference image, cache on vs off, and the ratio;
- per decode step: wall time vs time inside ONNX Runtime's run_with_iobinding; the difference is the host
  overhead of the loop (embedding gather, binding, sampling, detokenizing, stop checks).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from omniad_edge import Inspector  # noqa: E402


def frame(h, w, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([x / (w - 1), y / (h - 1), (x + y) / (h + w - 2)], -1) * 200 + 20
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def timed_session(inspector):
    """Wrap the decoder's run_with_iobinding to accumulate the time spent inside ONNX Runtime."""
    session = inspector.backend.decoder
    inner = session.run_with_iobinding
    spent = {"ms": 0.0, "calls": 0}

    def run(binding, *args):
        t = time.perf_counter()
        inner(binding, *args)
        spent["ms"] += (time.perf_counter() - t) * 1e3
        spent["calls"] += 1

    session.run_with_iobinding = run
    return spent


def median_timings(inspector, frames):
    inspector.run(frames[0])  # warm-up
    rows = [inspector.run(f).timings for f in frames]
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("bundle")
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--size", type=int, nargs=2, default=(224, 224))
    args = p.parse_args(argv)
    frames = [frame(*args.size, seed=s) for s in range(args.runs)]

    ins = Inspector(args.bundle, mode="explain", threads=args.threads, max_new_tokens=args.tokens)
    print(f"bundle {ins.bundle.name}: vocab {ins.bundle.model['vocab_size']}, {ins.bundle.model['num_layers']} "
          f"layers, hidden {ins.bundle.model['hidden_size']}; threads {args.threads}; frame {args.size}; "
          f"median of {args.runs}")
    stages = median_timings(ins, frames)
    r = ins.run(frames[0])
    print(f"prompt {r.prompt_tokens} tokens, generated {r.generated_tokens} ({r.finish_reason})")
    print("per stage (ms): " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))

    ref = [frame(*args.size, seed=100)]
    results = {}
    for cache in (False, True):
        ref_ins = Inspector(args.bundle, mode="explain", threads=args.threads, max_new_tokens=args.tokens,
                            reference=ref, prefix_cache=cache)
        results[cache] = median_timings(ref_ins, frames)
    off, on = results[False], results[True]
    print(f"prefix cache (1 reference image, prefix {ref_ins.run(frames[0]).options['prefix_tokens']} tokens): "
          f"prefill {off['prefill']:.2f} -> {on['prefill']:.2f} ms ({off['prefill'] / on['prefill']:.2f}x), "
          f"total {off['total']:.2f} -> {on['total']:.2f} ms ({off['total'] / on['total']:.2f}x)")

    # per-token overhead: decode loop wall time vs inside session.run
    spent = timed_session(ins)
    walls, insides, steps = [], [], []
    for f in frames:
        spent.update(ms=0.0, calls=0)
        t = ins.run(f).timings
        walls.append(t["decode"])
        steps.append(ins.generator._last_forwards)
        insides.append(spent["ms"])
    per_step_wall = statistics.median(w / max(1, s) for w, s in zip(walls, steps))
    # time inside ORT during decode = total inside - prefill's (measured separately with an isolated call)
    spent.update(ms=0.0, calls=0)
    ins.generate(frames[0], "x", max_new_tokens=1)
    prefill_only = spent["ms"]
    decode_inside = statistics.median((i - prefill_only) / max(1, s) for i, s in zip(insides, steps))
    print(f"decode step: {per_step_wall:.3f} ms wall, {decode_inside:.3f} ms inside onnxruntime, "
          f"host overhead {per_step_wall - decode_inside:.3f} ms/token "
          f"({100 * (per_step_wall - decode_inside) / per_step_wall:.0f}%)")


if __name__ == "__main__":
    main()
