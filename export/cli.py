"""`python -m export CHECKPOINT_DIR OUT_DIR [options]`, also run by `omniad-edge export`."""
from __future__ import annotations

import argparse
import sys

from .presets import PRESETS

__all__ = ["main", "build_parser"]


def build_parser(prog: str = "python -m export") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Export a Hugging Face Qwen2.5-VL or Qwen2-VL checkpoint "
                                "folder to an omniad_edge engine bundle (ONNX graphs + manifest).")
    p.add_argument("checkpoint", help="Hugging Face folder: config.json, *.safetensors, tokenizer.json, ...")
    p.add_argument("out", help="bundle directory to create (must not exist unless --overwrite)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8", "int4"], default="fp32",
                   help="decoder weights precision (graph inputs/outputs stay float32)")
    p.add_argument("--target", choices=["ort", "tensorrt"], default="ort",
                   help="runtime the graphs are for: ort (default): ONNX Runtime's fused contrib ops "
                        "(GroupQueryAttention decoder); tensorrt: standard ONNX ops only (plain attention, int4 as "
                        "qdq)")
    p.add_argument("--vision-precision", choices=["fp32", "fp16", "int8"], default=None,
                   help="vision graph precision (default: fp16 for fp16, int8 for int8/int4, else fp32)")
    p.add_argument("--max-image-tokens", type=int, default=1280,
                   help="cap on merged tokens per image; lowers max_pixels (default 1280)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="prompt and output grammar of a public model family (export/presets.py); --output-spec "
                        "overrides it key by key")
    p.add_argument("--output-spec", metavar="FILE", default=None,
                   help='JSON overriding the prompt templates and output grammar: {"name", "prompt", "output"}')
    p.add_argument("--name", default=None, help="bundle name in the manifest")
    p.add_argument("--int4-block-size", type=int, default=32, help="int4 quantization block size along K")
    p.add_argument("--int4-accuracy-level", type=int, choices=range(5), default=4,
                   help="int4 MatMulNBits compute on CPU: 4 int8 activations (default, as onnxruntime-genai), "
                        "0 float32 (slower, closer to fp32)")
    p.add_argument("--int4-keep-lm-head", action="store_true",
                   help="int4: leave the output projection (lm_head) float32 instead of int4")
    p.add_argument("--int4-format", choices=["matmulnbits", "qdq"], default=None,
                   help="int4 as ONNX Runtime's MatMulNBits (default for --target ort) or standard "
                        "DequantizeLinear+MatMul (opset 21; the only form for --target tensorrt)")
    p.add_argument("--fp32-vision-mlp-blocks", type=int, default=2,
                   help="fp16 only: how many last vision blocks keep their MLP in float32 (default 2)")
    p.add_argument("--vision-attention", choices=["auto", "plain"], default="auto",
                   help="auto: ONNX Runtime's fused attention where it measured faster (plain for --int4-format "
                        "qdq and --target tensorrt); plain: standard ONNX ops only")
    p.add_argument("--decoder-rotary", choices=["table", "computed"], default="table",
                   help="--target ort: table (default): mrope angles looked up by ONNX Runtime's MRotaryEmbedding "
                        "(needs onnxruntime >= 1.29; fewer nodes a step); computed: angles computed each step and "
                        "RotaryEmbedding (onnxruntime >= 1.20)")
    p.add_argument("--embed-dtype", choices=["float32", "float16"], default="float32",
                   help="dtype of embed_tokens.npy (float16 halves it; rows are cast to float32 at run time)")
    p.add_argument("--legacy-exporter", action="store_true", help="use the TorchScript exporter, not dynamo")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def main(argv=None) -> int:
    from omniad_edge.errors import ExportError

    args = build_parser().parse_args(argv)
    from .pipeline import ExportOptions, export_bundle

    opts = ExportOptions(precision=args.precision, target=args.target, max_image_tokens=args.max_image_tokens,
                         output_spec=args.output_spec, preset=args.preset, name=args.name, vision_precision=args.vision_precision,
                         overwrite=args.overwrite, prefer_dynamo=not args.legacy_exporter,
                         int4_block_size=args.int4_block_size, int4_accuracy_level=args.int4_accuracy_level,
                         int4_format=args.int4_format, int4_keep_lm_head=args.int4_keep_lm_head,
                         fp32_vision_mlp_blocks=args.fp32_vision_mlp_blocks, vision_attention=args.vision_attention,
                         decoder_rotary=args.decoder_rotary, embed_dtype=args.embed_dtype, quiet=args.quiet)
    try:
        out = export_bundle(args.checkpoint, args.out, opts)
    except ExportError as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0
