"""`omniad-edge` command: inspect, watch, serve, demo, export, build-engine, bench.

    omniad-edge inspect part1.png part2.png --engine BUNDLE --json results.json --overlay-dir overlays/
    omniad-edge watch line3.avi --json-lines --fps 5               (video, camera index, URL, pipeline, folder)
    omniad-edge serve [BUNDLE] --replicas 2 --port 8000           (extra `serve`: Ray Serve)
    omniad-edge demo --out demo_out
    omniad-edge export CHECKPOINT_DIR BUNDLE_DIR [--precision fp16 ...]      (extra `export`: torch, transformers)
    omniad-edge build-engine BUNDLE [...]                                     (TensorRT)
    omniad-edge adapt GOOD_DIR --out BUNDLE [--defects MVTEC_DIR] [--minutes N]   (extra `train`: fine-tune)

Exit codes: 0 success, 1 runtime/backend failure, 2 bad input (arguments, frames, bundle).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._version import __version__
from .errors import BackendError, OmniADError

EXPORT_HINT = "the export command needs torch and transformers: pip install omniad-edge[export]"
ADAPT_HINT = ("the adapt command needs the training extra (torch, transformers, onnx, onnxscript, tqdm): "
              "pip install omniad-edge[train]")
ADAPT_NEEDS = ("torch", "transformers", "onnx", "onnxscript", "tqdm")


def _speculative_flag(p) -> None:
    p.add_argument("--speculative", action="store_true",
                   help="explain mode: draft the text from earlier outputs and check drafts in one decoder run "
                        "(greedy; scores may differ in the last float digits: Inspector(speculative=True))")


def _inspect(args) -> int:
    from .inspector import Inspector
    from .visualize import save_overlay

    inspector = Inspector(args.engine, mode=args.mode, reference=args.reference or None, constrain=args.constrain,
                          max_new_tokens=args.max_new_tokens, threads=args.threads, providers=args.providers,
                          allow_fallback=args.allow_fallback, speculative=args.speculative)
    results, failures = [], 0
    for image in args.images:
        try:
            inspection = inspector.run(image)
        except OmniADError as exc:  # a bad frame does not stop the others
            failures += 1
            print(f"{image}: error: {exc}", file=sys.stderr)
            results.append({"image": str(image), "error": str(exc)})
            continue
        verdict = "ANOMALY" if inspection.is_anomalous else "ok"
        kind = f" {inspection.defect_type}" if inspection.defect_type else ""
        print(f"{image}: {verdict}{kind} score={inspection.score:.4f} "
              f"({inspection.timings['total']:.0f} ms, {inspection.provider})")
        entry = {"image": str(image), **inspection.to_dict(mask="none" if args.no_mask else "rle")}
        if args.overlay_dir:
            entry["overlay"] = str(save_overlay(Path(args.overlay_dir) / (Path(image).stem + "_overlay.png"),
                                                image, inspection))
        results.append(entry)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 2 if failures else 0


def _watch(args) -> int:
    import logging

    from .inspector import Inspector
    from .sources import open_source
    from .watch import watch

    # the library logs reconnects and skipped files; the command shows them on stderr
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("omniad-edge: %(message)s"))
    library_log = logging.getLogger("omniad_edge")
    library_log.addHandler(handler)
    source = None
    try:
        # the source first: a wrong camera or path is reported before a model is loaded
        with open_source(args.source, policy=args.policy, fps=args.fps, follow=args.follow,
                         idle_timeout=args.idle_timeout) as source:
            inspector = Inspector(args.engine, mode=args.mode, threads=args.threads,
                                  max_new_tokens=args.max_new_tokens, speculative=args.speculative)
            summary = watch(inspector, source, lambda line: _print_watch_line(line, args.json_lines),
                            overlay_dir=args.overlay_dir)
    except KeyboardInterrupt:
        print(f"watch: stopped by user; {source.dropped if source else 0} frames dropped", file=sys.stderr)
        return 130
    finally:
        library_log.removeHandler(handler)
    print(f"watch: {summary.text()}", file=sys.stderr)
    return 2 if summary.failed else 0


def _print_watch_line(line: dict, json_lines: bool) -> None:
    if json_lines:
        print(json.dumps(line), flush=True)
    elif "error" in line:
        print(f"{line['name']}: error: {line['error']}", flush=True)
    else:
        kind = f" {line['defect_type']}" if line["defect_type"] else ""
        print(f"{line['name']}: {'ANOMALY' if line['is_anomalous'] else 'ok'}{kind} score={line['score']:.4f} "
              f"({line['timings']['total']:.0f} ms)", flush=True)


def _serve(args) -> int:
    from .serve import serve_forever

    actor = {"num_cpus": args.cpus_per_replica}
    if args.gpus_per_replica:
        actor["num_gpus"] = args.gpus_per_replica
    serve_forever(args.engine, replicas=args.replicas, port=args.port, host=args.host, address=args.address,
                  inspector_options={"mode": args.mode, "threads": args.threads, "providers": args.providers},
                  ray_actor_options=actor, max_batch_size=args.max_batch_size,
                  ready=lambda url: print(f"serving at {url} (POST an image; Ctrl+C stops)", flush=True))
    return 0


def _demo(args) -> int:
    try:
        from .demo import run_demo
    except ImportError as exc:
        print(f"demo is not available in this installation: {exc}", file=sys.stderr)
        return 1
    rows = run_demo(args.out, n=args.n, seed=args.seed, engine=args.engine)
    print(demo_table(rows))
    print(f"\n{len(rows)} frames inspected; overlays and results.json in {args.out}")
    return 0


def demo_table(rows) -> str:
    """A Markdown table of run_demo's rows: truth next to what the model said."""
    lines = ["| frame | size | surface | truth | verdict | score | defect type | mask IoU | tokens | ms |",
             "| --- | --- | --- | --- | --- | ---: | --- | ---: | ---: | ---: |"]
    for r in rows:
        iou = "" if r.get("iou") is None else f"{r['iou']:.2f}"
        verdict = ("anomalous" if r["anomalous"] else "normal") + ("" if r["correct"] else " (wrong)")
        lines.append(f"| {r['frame']} | {r['size'][1]}x{r['size'][0]} {r['mode']} | {r['surface']} | {r['truth']} | "
                     f"{verdict} | {r['score']:.3f} | {r['defect_type'] or '-'} | {iou} | {r['tokens']} | "
                     f"{r['ms']:.0f} |")
    return "\n".join(lines)


def _export(args) -> int:
    import importlib.util

    # find_spec only looks: the device package never imports torch itself
    if any(importlib.util.find_spec(name) is None for name in ("torch", "transformers")):
        print(EXPORT_HINT, file=sys.stderr)
        return 2
    try:
        from export.cli import main as export_main
    except ImportError as exc:
        print(f"the exporter package is not installed ({exc}); run from a source checkout or "
              "pip install omniad-edge[export]", file=sys.stderr)
        return 2
    return int(export_main(args.export_args) or 0)


def _adapt(args) -> int:
    import importlib.util

    missing = [name for name in ADAPT_NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        print(f"{ADAPT_HINT} (missing: {', '.join(missing)})", file=sys.stderr)
        return 2
    from training.adapt import run

    try:
        run(args)
    except KeyboardInterrupt:  # outside training (which checkpoints and says how to resume): nothing to keep
        print(f"adapt: stopped by user; {args.out} was not written or changed", file=sys.stderr)
        return 130
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omniad-edge", description="OmniAD-style industrial anomaly inspection "
                                     "on edge devices.")
    parser.add_argument("--version", action="version", version=f"omniad-edge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="inspect image files")
    p.add_argument("images", nargs="+", help="image files (anything Pillow reads)")
    p.add_argument("--engine", default=None, help="bundle directory (default: the embedded bundle)")
    p.add_argument("--mode", choices=["detect", "explain"], default="detect")
    p.add_argument("--reference", nargs="*", default=None, help="normal sample images shown before every query")
    p.add_argument("--constrain", action="store_true", help="constrain the output to the bundle's grammar")
    _speculative_flag(p)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for ONNX Runtime (default: its own)")
    p.add_argument("--providers", nargs="*", default=None, help="cpu, cuda, tensorrt (default: cpu)")
    p.add_argument("--allow-fallback", action="store_true", help="accept a provider fallback instead of failing")
    p.add_argument("--json", default=None, help="write all results to this JSON file")
    p.add_argument("--no-mask", action="store_true", help="omit the mask from the JSON (default: row-major RLE)")
    p.add_argument("--overlay-dir", default=None, help="write an overlay PNG per image here")
    p.set_defaults(run=_inspect)

    p = sub.add_parser("watch", help="inspect a video file, camera, stream or image folder as frames arrive "
                       "(extra `camera` for all but folders)")
    p.add_argument("source", help="video file, camera index (0), rtsp:// or http:// URL, GStreamer pipeline "
                   "(elements joined by '!'), or a folder of images")
    p.add_argument("--engine", default=None, help="bundle directory (default: the embedded bundle)")
    p.add_argument("--mode", choices=["detect", "explain"], default="detect")
    p.add_argument("--fps", type=float, default=None, help="read at most N frames per second")
    p.add_argument("--policy", choices=["every", "latest"], default="every",
                   help="every frame (default), or only the newest when inspection falls behind (drops counted)")
    p.add_argument("--follow", action="store_true", help="folder: keep watching for new images")
    _speculative_flag(p)
    p.add_argument("--idle-timeout", type=float, default=None,
                   help="with --follow: stop after this many seconds without a new image")
    p.add_argument("--json-lines", action="store_true", help="one JSON object per frame on stdout "
                   "(default: one readable line per frame)")
    p.add_argument("--overlay-dir", default=None, help="write an overlay PNG per frame here")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for ONNX Runtime (default: its own)")
    p.set_defaults(run=_watch)

    p = sub.add_parser("serve", help="serve Inspector replicas over HTTP on Ray Serve (extra `serve`)")
    p.add_argument("engine", nargs="?", default=None, help="bundle directory, readable on every node "
                   "(default: the embedded bundle)")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for other machines)")
    p.add_argument("--address", default=None, help="an existing Ray cluster (e.g. auto); default: start a local one")
    p.add_argument("--mode", choices=["detect", "explain"], default="detect")
    p.add_argument("--max-batch-size", type=int, default=8, help="concurrent requests batched onto one run_batch")
    p.add_argument("--cpus-per-replica", type=float, default=1.0)
    p.add_argument("--gpus-per-replica", type=float, default=0.0, help="e.g. 1 (with --providers cuda)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads per replica (default: its CPUs)")
    p.add_argument("--providers", nargs="*", default=None, help="cpu, cuda, tensorrt (default: cpu)")
    p.set_defaults(run=_serve)

    p = sub.add_parser("demo", help="inspect synthetic frames and save overlays")
    p.add_argument("--out", default="omniad_demo", help="output directory")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engine", default=None)
    p.set_defaults(run=_demo)

    p = sub.add_parser("export", help="export a Hugging Face checkpoint to a bundle (extra `export`)",
                       add_help=False)
    p.add_argument("export_args", nargs=argparse.REMAINDER)
    p.set_defaults(run=_export)

    try:  # the training package ships with the SDK; its argument parsing needs no torch
        from training.adapt import add_arguments
    except ImportError:
        add_arguments = None
    if add_arguments is not None:
        p = sub.add_parser("adapt", help="fine-tune the model on your part's good images (extra `train`)")
        add_arguments(p)
        p.set_defaults(run=_adapt)

    from .tensorrt import cli as build_engine

    p = build_engine.add_parser(sub)
    p.set_defaults(run=lambda a: int(build_engine.main(a) or 0))

    # bench owns its options (a REMAINDER argument would not capture leading options such as --frames)
    from . import bench

    bench.add_parser(sub)  # its defaults run bench.main(namespace)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except BackendError as exc:
        print(f"omniad-edge: {exc}", file=sys.stderr)
        return 1
    except OmniADError as exc:
        print(f"omniad-edge: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
