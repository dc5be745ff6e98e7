"""The decode step right after a prefill against later steps, per decoder graph, under plain ONNX Runtime.

    python benchmarks/first_step.py --graph omniad=DIR/bundle-fp32/decoder.onnx \
        --graph genai=DIR/genai-fp32/model.onnx [--kv 2,64] [--prefill 100] [--steps 8] [--frames 40] \
        [--threads 2] [--json OUT.json]

A detect frame of the reference model runs one decoder forward after its prefill, so its "decode per token" is
that first step. Each frame here runs a --prefill-token prefill, then --steps one-token steps on the same cache
(past and present bound to one buffer, as both runtimes do), graphs alternating frame by frame; prints the median
time of the prefill and of each step after it over the frames (the first 5 dropped), with the load average.
With --grown, each graph also runs a control frame: a 2-token prefill and one-token steps up to the same cache length,
then the same timed steps at the same positions (it tells a state the long prefill leaves from the context length);
with --sweep MB, a third frame kind grows the cache the same way and then reads MB of unrelated memory before the
timed steps (cold caches without a prefill).
Thread spinning stays off: with it on, the alternating sessions' thread pools would spin against each other.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import time

import numpy as np


def _layer_and_kind(name: str) -> tuple[list[str], str | None]:
    """'past_key_values.3.value' -> (['3'], 'value'): the numbers in the name, and its last word that is key or
    value (genai's names hold both words before the layer)."""
    parts = re.split(r"[._]", name)
    kinds = [p for p in parts if p in ("key", "value")]
    return [p for p in parts if p.isdigit()], kinds[-1] if kinds else None


def _cache_names(session) -> list[tuple[str, str]]:
    """(past input, present output) pairs, matched by layer number and key/value in their names."""
    outs = [o.name for o in session.get_outputs() if o.name != "logits"]
    pairs = []
    for name in (i.name for i in session.get_inputs()):
        if "past" not in name:
            continue
        match = [o for o in outs if _layer_and_kind(o) == _layer_and_kind(name)]
        if len(match) != 1:
            raise SystemExit(f"cannot pair {name} with one present output ({match})")
        pairs.append((name, match[0]))
    return pairs


def make_runner(path: str, threads: int, capacity: int, kv: tuple[int, int] | None):
    from graph_step import _session

    session = _session(path, threads, spinning=False)
    shapes = {i.name: i.shape for i in session.get_inputs()}
    hidden = shapes["inputs_embeds"][-1]
    cache = {}
    for past, present in _cache_names(session):
        heads, dim = shapes[past][1], shapes[past][3]
        if not (isinstance(heads, int) and isinstance(dim, int)):
            if kv is None:
                raise SystemExit(f"{path}: {past} has symbolic dims {shapes[past]}: give --kv HEADS,DIM")
            heads, dim = kv
        cache[past] = (present, np.zeros((1, heads, capacity, dim), np.float32))
    io = session.io_binding()
    rng = np.random.default_rng(0)

    def run(n: int, length: int) -> float:
        io.bind_cpu_input("inputs_embeds", rng.standard_normal((1, n, hidden)).astype(np.float32))
        io.bind_cpu_input("position_ids", np.tile(np.arange(length, length + n), (3, 1, 1)).astype(np.int64))
        io.bind_cpu_input("attention_mask", np.ones((1, length + n), np.int64))
        for past, (present, buf) in cache.items():
            io.bind_cpu_input(past, buf)
            io.bind_output(present, "cpu", 0, np.float32, list(buf.shape), buf.ctypes.data)
        io.bind_output("logits")
        start = time.perf_counter()
        session.run_with_iobinding(io)
        return (time.perf_counter() - start) * 1e3

    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--graph", action="append", required=True, metavar="NAME=PATH")
    p.add_argument("--prefill", type=int, default=100)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--grown", action="store_true", help="also time the steps after a cache grown one token at a time")
    p.add_argument("--sweep", type=int, default=0, metavar="MB",
                   help="also time the steps after a grown cache and a read of MB of other memory")
    p.add_argument("--kv", help="KV heads and head size (HEADS,DIM) for graphs whose cache dims are symbolic")
    p.add_argument("--json")
    args = p.parse_args(argv)
    graphs = dict(g.split("=", 1) for g in args.graph)
    load = os.getloadavg()
    print(f"load average before: {load}; threads {args.threads}, spinning off, prefill {args.prefill} tokens, "
          f"{args.frames} frames (first 5 dropped), medians in ms")
    kv = tuple(int(x) for x in args.kv.split(",")) if args.kv else None
    runners = {name: make_runner(path, args.threads, args.prefill + args.steps + 8, kv)
               for name, path in graphs.items()}

    other = np.ones(args.sweep * 2**20 // 8)

    def frame(run, kind: str) -> list[float]:
        if kind == "prefill":
            first = run(args.prefill, 0)
        else:  # the same cache length reached by steps; the first column is then the 2-token prefill
            first = run(2, 0)
            for j in range(2, args.prefill):
                run(1, j)
            if kind == "sweep":
                other.sum()
        return [first] + [run(1, args.prefill + j) for j in range(args.steps)]

    kinds = ["prefill"] + ["grown"] * args.grown + ["sweep"] * bool(args.sweep)
    labels = {"prefill": "{}", "grown": "{}, grown", "sweep": "{}, grown + sweep"}
    runs = [(name, kind) for kind in kinds for name in graphs]
    times = {run: [] for run in runs}
    for _ in range(args.frames):
        for name, kind in runs:
            times[name, kind].append(frame(runners[name], kind))
    result = {"options": vars(args), "load_average_before": load, "graphs": {}}
    for name, kind in runs:
        label = labels[kind].format(name)
        med = np.median(np.asarray(times[name, kind][5:]), axis=0)
        result["graphs"][label] = {"prefill_ms": float(med[0]), "steps_ms": [float(x) for x in med[1:]]}
        if kind != "prefill":
            result["graphs"][label]["prefill_tokens"] = 2
        print(f"{label:24s} prefill {med[0]:.2f} | steps after it: " + " ".join(f"{x:.3f}" for x in med[1:])
              + f" | first / last {med[1] / med[-1]:.2f}")
    result["load_average_after"] = os.getloadavg()
    print(f"load average after: {result['load_average_after']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
