"""Per-token host overhead of the decode loop: this tree vs a baseline tree, interleaved in one run.

    nice -n 10 python benchmarks/bench_loop.py BUNDLE_DIR --baseline DIR [--rounds 5] [--runs 15] [--tokens 32]
        [--python-loop]

DIR holds another copy of the package (DIR/omniad_edge), e.g. the last commit:
    mkdir /tmp/base && git archive HEAD omniad_edge | tar -x -C /tmp/base
    cp omniad_edge/_native*.so /tmp/base/omniad_edge/

Each round runs one child process per tree (order alternating between rounds, so drift on a shared machine hits
both alike). With --python-loop a third child runs this tree with the native decode step turned off
(backend_options native=False: the Python session and loop, the fallback). A child runs --runs frames through
Inspector.run (explain and detect mode, after one warm-up frame) and splits every decode step into time inside the
decoder session's run (run_with_iobinding, or the native session's own run timings when the tree runs the native
decode step) and the rest of the step (the host overhead: sampling, embedding gather, positions, binding,
detokenizing, stop checks). A native loop that ends the call leaves its results in arrays that the rows take
after the decode phase (Generation.timings["read_back"]); "with the read-back" adds that per-frame time, spread
over the frame's steps, to the host overhead and the step (trees without it: 0). Wall time swings with a shared
machine's load, so it also reports host CPU per frame:
the thread's CPU time (time.thread_time, which a preempted process does not accrue) outside the vision and decoder
session runs, i.e. preprocessing, prompt, the decode loop's host work and postprocessing (with --threads 1
onnxruntime computes on the calling thread, so its share is subtracted exactly). Prints per tree the median over
rounds of the per-round medians, and the ratio current / baseline.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(args) -> None:
    sys.path.insert(0, args.tree)
    import numpy as np
    from omniad_edge import Inspector

    def frame(seed, h=224, w=224):
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack([x / (w - 1), y / (h - 1), (x + y) / (h + w - 2)], -1) * 200 + 20
        return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)

    out = {"tree": args.tree}
    for mode in ("explain", "detect"):
        options = {"backend_options": {"native": False}} if args.python_loop else {}
        ins = Inspector(args.bundle, mode=mode, threads=args.threads, max_new_tokens=args.tokens, **options)
        native = getattr(ins.backend, "native", None)
        inner_vision = ins.backend.vision.run
        calls: list[float] = []
        cpu_inside = [0.0]

        def run(binding, *rest):
            t, c = time.perf_counter(), time.thread_time()
            inner(binding, *rest)
            calls.append((time.perf_counter() - t) * 1e3)
            cpu_inside[0] += time.thread_time() - c

        def run_vision(*a, **k):
            c = time.thread_time()
            out = inner_vision(*a, **k)
            cpu_inside[0] += time.thread_time() - c
            return out

        def native_runs():  # the native session's own (wall, thread CPU) per run since the last call
            for wall_ns, cpu_ns in native.take_runs():
                calls.append(wall_ns * 1e-6)
                cpu_inside[0] += cpu_ns * 1e-9

        generations = []  # this frame's Generation (its timings hold the native loop's read-back, newer trees)
        generate = ins.generator.generate

        def recording_generate(*a, **k):
            out = generate(*a, **k)
            generations[:] = out
            return out

        ins.generator.generate = recording_generate
        if native is None:
            session = ins.backend.decoder
            inner = session.run_with_iobinding
            session.run_with_iobinding = run
        else:
            native.record(True)
        ins.backend.vision.run = run_vision
        ins.run(frame(0))
        walls, insides, overheads, tokens, host_cpu, reads = [], [], [], [], [], []
        for seed in range(1, args.runs + 1):
            if native is not None:
                native.take_runs()
            calls.clear()
            cpu_inside[0] = 0.0
            c0 = time.thread_time()
            r = ins.run(frame(seed))
            if native is not None:
                native_runs()
            host_cpu.append((time.thread_time() - c0 - cpu_inside[0]) * 1e3)
            steps = ins.generator._last_forwards
            if steps == 0:
                continue
            wall = r.timings["decode"] / steps
            inside = sum(calls[1:]) / steps  # calls[0] is the prefill
            walls.append(wall)
            insides.append(inside)
            overheads.append(wall - inside)
            reads.append(generations[0].timings.get("read_back", 0.0) / steps)
            tokens.append(r.generated_tokens)
        out[mode] = {"steps": len(walls) and statistics.median(tokens),
                     "wall": statistics.median(walls) if walls else None,
                     "inside": statistics.median(insides) if insides else None,
                     "overhead": statistics.median(overheads) if overheads else None,
                     "read": statistics.median(reads) if reads else None,
                     "host_cpu": statistics.median(host_cpu)}
    print(json.dumps(out))


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("bundle")
    p.add_argument("--baseline", required=True, help="directory holding the baseline omniad_edge package")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--python-loop", action="store_true",
                   help="also run this tree with the native decode step off (the Python loop)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tree", default=str(ROOT), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    if not (Path(args.baseline) / "omniad_edge" / "__init__.py").is_file():
        p.error(f"--baseline: expected a directory holding omniad_edge/__init__.py, got {args.baseline}")

    trees = {"baseline": str(Path(args.baseline).resolve()), "current": str(ROOT)}
    if args.python_loop:
        trees["current-py"] = str(ROOT)
    results = {name: [] for name in trees}
    print(f"load average before: {tuple(round(x, 2) for x in os.getloadavg())}")
    for r in range(args.rounds):
        order = list(trees) if r % 2 == 0 else list(reversed(trees))
        for name in order:
            cmd = [sys.executable, __file__, args.bundle, "--baseline", args.baseline, "--child", "--tree",
                   trees[name], "--runs", str(args.runs), "--tokens", str(args.tokens), "--threads",
                   str(args.threads)] + (["--python-loop"] if name == "current-py" else [])
            env = dict(os.environ, PYTHONPATH="")  # the child puts its own tree first
            line = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout.strip()
            results[name].append(json.loads(line.splitlines()[-1]))

    print(f"bundle {args.bundle}; {args.rounds} rounds x {args.runs} frames, threads {args.threads}; "
          f"medians over rounds of per-round medians (ms per decode step)")
    for mode in ("explain", "detect"):
        figures = {}
        for name in trees:
            rows = [r[mode] for r in results[name] if r[mode]["wall"] is not None]
            if not rows:
                continue
            figures[name] = {k: statistics.median(row[k] for row in rows)
                             for k in ("steps", "wall", "inside", "overhead", "read", "host_cpu")}
        for name, f in figures.items():
            print(f"{mode:8s} {name:10s} tokens {f['steps']:.0f}: step {f['wall']:.3f}, inside onnxruntime "
                  f"{f['inside']:.3f}, host overhead {f['overhead']:.3f} ({100 * f['overhead'] / f['wall']:.1f}%), "
                  f"with the read-back {f['overhead'] + f['read']:.3f} "
                  f"({100 * (f['overhead'] + f['read']) / (f['wall'] + f['read']):.1f}%); "
                  f"host CPU per frame {f['host_cpu']:.2f} ms")
        b = figures.get("baseline")
        for name in ("current", "current-py"):
            c = figures.get(name)
            if b and c:
                print(f"{mode:8s} {name} / baseline: host overhead {c['overhead'] / b['overhead']:.2f}x, "
                      f"step {c['wall'] / b['wall']:.2f}x, host CPU per frame {c['host_cpu'] / b['host_cpu']:.2f}x")
    print(f"load average after: {tuple(round(x, 2) for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
