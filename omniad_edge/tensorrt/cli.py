"""`omniad-edge build-engine BUNDLE [...]`: parses the arguments and calls build.py (docs/TENSORRT.md).
omniad_edge/cli.py calls add_parser(subparsers) and main(args)."""
from __future__ import annotations

import argparse
import json
import math
import sys

from ..errors import BundleError, OmniADError
from .build import build_engines, plan
from .limits import DEFAULT_VISION_FP32_BLOCKS, BuildOptions

__all__ = ["add_parser", "options_from_args", "main"]


def _int_arg(flag: str, low: int = 1):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{flag} must be >= {low}, got {value}")
        return value
    return parse


def _gb_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--workspace-gb expects a number of GiB, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"--workspace-gb must be a positive number of GiB, got {text!r}")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "build-engine", help="build TensorRT engines for a bundle on this device",
        description="Build TensorRT engines (vision + decoder) into BUNDLE/tensorrt/ with a build record. "
                    "Engines run only on the GPU model and TensorRT version they were built with.")
    p.add_argument("bundle", metavar="BUNDLE", help="bundle directory (holds manifest.json)")
    p.add_argument("--fp16", action="store_true", help="fp16 kernels for an fp32 bundle (fp16 bundles are fp16 "
                   "already)")
    p.add_argument("--int8", action="store_true", help="int8 kernels for an explicitly quantised (Q/DQ) graph")
    p.add_argument("--fp8", action="store_true", help="fp8 kernels for a Q/DQ graph (compute capability >= 8.9)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls in fp32 layers (off: match ONNX Runtime)")
    p.add_argument("--max-image-tokens", type=_int_arg("--max-image-tokens"), help="image tokens per frame "
                   "(default: the bundle's limit); vision attention memory grows with its square")
    p.add_argument("--max-images", type=_int_arg("--max-images"), help="frames per vision call (default: --batch)")
    p.add_argument("--max-seq-len", type=_int_arg("--max-seq-len"), help="prompt + generated tokens (KV cache size)")
    p.add_argument("--max-prefill", type=_int_arg("--max-prefill"), help="tokens per prefill call (default: "
                   "max-seq-len)")
    p.add_argument("--batch", type=_int_arg("--batch"), default=1, help="frames per batch (default 1)")
    p.add_argument("--workspace-gb", type=_gb_arg, help="TensorRT tactic workspace limit in GiB")
    p.add_argument("--timing-cache", metavar="F", help="timing cache file, read if present and "
                   "updated (faster rebuilds)")
    p.add_argument("--vision-fp32-blocks", type=_int_arg("--vision-fp32-blocks", 0),
                   help=f"with --fp16: last vision blocks whose MLP stays fp32 (default {DEFAULT_VISION_FP32_BLOCKS})")
    p.add_argument("--device", type=_int_arg("--device", 0), default=0, help="CUDA device index")
    p.add_argument("--skip-memory-check", action="store_true", help="build even if the estimate exceeds free memory")
    p.add_argument("--dry-run", action="store_true", help="print limits, profiles and memory estimate; build nothing")
    p.set_defaults(func=main, handler=main)
    return p


def options_from_args(args: argparse.Namespace) -> BuildOptions:
    return BuildOptions(
        fp16=args.fp16, int8=args.int8, fp8=args.fp8, tf32=args.tf32, max_image_tokens=args.max_image_tokens,
        max_images=args.max_images, max_seq_len=args.max_seq_len, max_prefill=args.max_prefill, batch=args.batch,
        workspace_gb=args.workspace_gb, timing_cache=args.timing_cache, vision_fp32_blocks=args.vision_fp32_blocks,
        device=args.device, skip_memory_check=args.skip_memory_check)


def main(args: argparse.Namespace | list[str] | None = None) -> int:
    """Run build-engine; returns 0 on success, 2 on bad input, 1 when TensorRT/the device fails."""
    if not isinstance(args, argparse.Namespace):
        parser = argparse.ArgumentParser(prog="omniad-edge")
        add_parser(parser.add_subparsers(dest="command", required=True))
        argv = list(sys.argv[1:] if args is None else args)
        args = parser.parse_args(argv if argv[:1] == ["build-engine"] else ["build-engine", *argv])
    opts = options_from_args(args)
    try:
        if args.dry_run:
            from ..bundle import load_bundle

            print(json.dumps(plan(load_bundle(args.bundle), opts), indent=2))
            return 0
        build_engines(args.bundle, opts)
    except (BundleError, ValueError) as exc:
        print(f"omniad-edge build-engine: error: {exc}", file=sys.stderr)
        return 2
    except (OmniADError, RuntimeError, OSError) as exc:  # TensorRT, the device, the file system
        print(f"omniad-edge build-engine: error: {exc}", file=sys.stderr)
        return 1
    return 0
