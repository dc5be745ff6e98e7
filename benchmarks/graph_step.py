"""One decode step of decoder graphs under plain onnxruntime, no generation loop: is a runtime's speed its graph or
its loop? Same session options for every graph, with ONNX Runtime's thread spinning off and on.

    python benchmarks/graph_step.py --graph omniad=BUNDLE/decoder.onnx --graph genai=GENAI/model.onnx \
        [--past 140] [--rounds 5] [--repeats 20] [--threads 2] [--json FILE]

The graphs are timed in alternating rounds (--repeats steps of each graph a round, the order rotating), so the
machine's drift hits them alike; each graph's ratio to the first one is the median of the per-round ratios. With
spinning on, a 100 ms pause after each graph's turn lets its threads stop spinning before the next graph runs
(compare.SPIN_PAUSE_S). The JSON also holds the load average at start and end, the machine and the device state
(omniad_edge.devicestate).

Inputs are random (the time of a step does not depend on the values): one new token attending over --past cached
positions. omniad_edge's plain graph takes BSHD past (past_key.{i}), its fused graph (export --target ort) and
onnxruntime-genai's BNSH (past_key.{i}, past_key_values.{i}.key); both BNSH graphs run with past and present apart.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from omniad_edge import bench, devicestate  # noqa: E402


def _session(path: str, threads: int, spinning: bool):
    import onnxruntime as ort

    from omniad_edge.backends.onnxruntime import spin_entries

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    for key, value in spin_entries(spinning).items():  # the backend's spinning settings
        so.add_session_config_entry(key, value)
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _feeds(session, past: int, rng, head_dim: int) -> dict:
    """Random feeds for every input, by name and declared shape (past length where the graph has a symbol)."""
    feeds = {}
    for i in session.get_inputs():
        if i.name == "position_ids":
            feeds[i.name] = np.full((3, 1, 1), past, np.int64)
        elif i.name == "attention_mask":
            feeds[i.name] = np.ones((1, past + 1), np.int64)
        else:
            shape = []
            for dim in i.shape:
                if isinstance(dim, int):
                    shape.append(dim)
                elif "past" in str(dim) or "capacity" in str(dim):
                    # a fused (BNSH) decoder given its past only, not a shared buffer: it copies the past into its
                    # present output, as genai's graph does here; benchmarks/decoder_graphs.py binds it shared
                    shape.append(past)
                elif "kv_cache_dim" in str(dim) or "head" in str(dim):  # genai leaves head_size symbolic
                    shape.append(head_dim)
                else:  # batch, sequence (1 new token)
                    shape.append(1)
            feeds[i.name] = (rng.standard_normal(shape) * 0.05).astype(np.float32)
    return feeds


def _stepper(path: str, past: int, threads: int, spinning: bool, head_dim: int):
    """A function timing n steps of the graph (ms each), after one warm-up step."""
    session = _session(path, threads, spinning)
    feeds = _feeds(session, past, np.random.default_rng(0), head_dim)
    session.run(["logits"], feeds)

    def steps(n: int) -> list[float]:
        times = []
        for _ in range(n):
            start = time.perf_counter()
            session.run(["logits"], feeds)
            times.append((time.perf_counter() - start) * 1e3)
        return times

    return steps


def time_graphs(graphs: dict, args, spinning: bool) -> dict:
    """{name: {median_ms, min_ms, repeats, ratio_vs_first}}: alternating rounds over the graphs (module docstring)."""
    from compare import SPIN_PAUSE_S

    steppers = {name: _stepper(path, args.past, args.threads, spinning, args.head_dim) for name, path in graphs.items()}
    names = list(graphs)
    times = {name: [] for name in names}
    rounds = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            got = steppers[name](args.repeats)
            times[name] += got
            rounds[name].append(statistics.median(got))
            if spinning:
                time.sleep(SPIN_PAUSE_S)
    first = rounds[names[0]]
    return {name: {"median_ms": statistics.median(times[name]), "min_ms": min(times[name]),
                   "repeats": len(times[name]), "rounds": args.rounds, "round_medians_ms": rounds[name],
                   "ratio_vs_first": statistics.median(b / a for a, b in zip(first, rounds[name]))}
            for name in names}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--graph", action="append", required=True, metavar="NAME=PATH",
                   help="a decoder graph to time (repeatable)")
    p.add_argument("--past", type=int, default=140)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=20, help="steps of each graph a round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64, help="for graphs that leave it symbolic")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    out = {"past": args.past, "threads": args.threads, "graphs": {}, "machine": bench.machine_info()}
    recorder = devicestate.Recorder(usable_cores=out["machine"]["usable_cores"])
    recorder.start()
    graphs = {}
    for item in args.graph:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            p.error(f"--graph: expected NAME=PATH, got {item!r}")
        graphs[name] = path
    first = next(iter(graphs))
    for spinning in (False, True):  # one setting at a time: spinning sessions would spin against the others
        for name, r in time_graphs(graphs, args, spinning).items():
            out["graphs"][f"{name} spinning={int(spinning)}"] = {**r, "path": graphs[name]}
            print(f"{name:24s} spinning={int(spinning)}: median {r['median_ms']:.3f} ms, min {r['min_ms']:.3f} ms, "
                  f"{r['ratio_vs_first']:.3f}x {first}", flush=True)
    out["device_state"] = recorder.stop(frames=0)
    out["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    print(f"load average {out['machine'].get('load_average_1m')} at start, {out['load_average_1m_end']} at end")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
