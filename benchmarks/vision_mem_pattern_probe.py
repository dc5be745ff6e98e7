"""Peak extra memory of a bundle's vision graph after each of several calls, under one ONNX Runtime session option.

    python benchmarks/vision_mem_pattern_probe.py BUNDLE default|nopattern|noarena [--side 896] [--calls 3]

(benchmarks/results/vision-scaling-mem-pattern-on.md: with the memory pattern on, the second call doubled the peak.)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]


def main() -> None:
    import onnxruntime as ort

    from helpers.frames import make_frame
    from omniad_edge import load_bundle
    from omniad_edge.preprocess import concat_images, preprocess_image
    from vision_scaling import _PeakRss

    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("mode", choices=["default", "nopattern", "noarena"])
    ap.add_argument("--side", type=int, default=896)
    ap.add_argument("--calls", type=int, default=3)
    args = ap.parse_args()
    bundle = load_bundle(args.bundle)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.enable_mem_pattern = args.mode != "nopattern"
    opts.enable_cpu_mem_arena = args.mode != "noarena"
    session = ort.InferenceSession(str(bundle.vision_path), opts, providers=["CPUExecutionProvider"])
    v = bundle.model["vision"]
    image = preprocess_image(make_frame(args.side, args.side, seed=args.side), bundle.preprocess)
    inputs = concat_images([image], v["spatial_merge_size"], v["window_size"], v["patch_size"])
    feeds = {i.name: inputs[i.name] for i in session.get_inputs()}
    with _PeakRss() as peak:
        for call in range(args.calls):
            session.run(None, feeds)
            print(f"{args.mode} {args.side}x{args.side}: peak extra after call {call + 1}: "
                  f"{peak.extra_mb:.0f} MB", flush=True)


if __name__ == "__main__":
    main()
