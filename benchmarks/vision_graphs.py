"""Vision graphs of one model exported different ways, side by side: nodes after ONNX Runtime's optimizer, output
difference from the first graph, and the time of a call, alternating between the graphs.

    python benchmarks/vision_graphs.py OLD/vision.onnx NEW/vision.onnx [--threads 2] [--runs 40] [--spinning]
        [--pause MS]

Inputs: one 224x224 synthetic frame, preprocessed and indexed as Inspector.run does for the first graph's bundle
(the graphs must share the tower's shape). Spinning off, memory pattern off (the backend's vision settings); with
--spinning each graph also runs in a session with the backend's spinning settings turned on (threads spin between
the ops of a run and stop when it returns), alternating with the others; --pause sleeps that long after every call
(a station's idle gap between frames). Prints the load average before and after.
"""
from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def vision_inputs(bundle_dir: Path) -> dict:
    """One synthetic frame's vision inputs, made as Inspector._encode makes them for that bundle."""
    from omniad_edge import synth
    from omniad_edge.bundle import load_bundle
    from omniad_edge.preprocess import concat_images, preprocess_image

    bundle = load_bundle(bundle_dir)
    vision = bundle.model["vision"]
    pre = preprocess_image(synth.make_sample(synth.FIRST_UNSEEN_SEED).image, bundle.preprocess)
    return concat_images([pre], int(vision["spatial_merge_size"]), vision["window_size"], int(vision["patch_size"]))


def main(argv=None) -> int:
    import onnx
    import onnxruntime as ort

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("graphs", nargs="+")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=40)
    p.add_argument("--spinning", action="store_true", help="also time each graph with the backend's spinning on")
    p.add_argument("--pause", type=float, default=0.0, metavar="MS", help="sleep after every call (default 0)")
    args = p.parse_args(argv)
    from omniad_edge.backends.onnxruntime import spin_entries
    print(f"load average before: {os.getloadavg()}; threads {args.threads}, {args.runs} alternating runs, first 5 "
          f"dropped, medians; {args.pause:g} ms pause after every call")
    inputs = vision_inputs(Path(args.graphs[0]).parent)
    sessions, outputs = [], []  # (label, session, feeds, spinning)
    with tempfile.TemporaryDirectory() as tmp:
        for k, path in enumerate(args.graphs):
            for spin in (False, True) if args.spinning else (False,):
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = args.threads
                opts.enable_mem_pattern = False
                for key, value in spin_entries(spin).items():
                    opts.add_session_config_entry(key, value)
                opts.log_severity_level = 3
                opts.optimized_model_filepath = str(Path(tmp) / f"{k}-{int(spin)}.onnx")
                session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
                feeds = {i.name: inputs[i.name] for i in session.get_inputs()}
                sessions.append((path + (", spinning" if spin else ""), session, feeds, spin))
                if spin:
                    continue
                outputs.append(session.run(None, feeds)[0])
                ops = collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath,
                                                                       load_external_data=False).graph.node)
                print(f"{path}: {sum(ops.values())} nodes after optimization; "
                      f"max |output - first graph's| {float(np.abs(outputs[-1] - outputs[0]).max()):.2e}; "
                      f"most common {ops.most_common(5)}")
    times = [[] for _ in sessions]
    for _ in range(args.runs):
        for k, (_, session, feeds, spin) in enumerate(sessions):
            start = time.perf_counter()
            session.run(None, feeds)
            times[k].append((time.perf_counter() - start) * 1e3)
            time.sleep(args.pause / 1e3)
    for (label, *_), t in zip(sessions, times):
        print(f"{label}: median {statistics.median(t[5:]):.3f} ms a call")
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
