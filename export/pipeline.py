"""Checkpoint folder -> engine bundle directory (DESIGN.md), written atomically.

Everything is written into a hidden sibling directory and renamed into place at the end, so an interrupted export
never leaves a directory that looks like a bundle.
"""
from __future__ import annotations

import gc
import os
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from omniad_edge.contract import (DECODER_INPUTS, DRAFT_LOGITS, LOGITS, TARGETS, VISION_OUTPUT, decoder_input_names,
                                  decoder_output_names)
from omniad_edge.errors import ExportError

from .checkpoint import inspect_checkpoint, load_model
from .manifest import (build_manifest, exporter_section, file_entries, load_output_spec, model_section,
                       preprocess_section, write_manifest)
from .presets import check_spec_tokens

__all__ = ["ExportOptions", "export_bundle", "PRECISIONS"]

PRECISIONS = ("fp32", "fp16", "int8", "int4")
VISION_PRECISIONS = ("fp32", "fp16", "int8")
VISION_ATTENTION = ("auto", "plain")


@dataclass
class ExportOptions:
    precision: str = "fp32"
    target: str = "ort"  # "ort": ONNX Runtime's fused contrib ops; "tensorrt": standard ONNX ops only (TENSORRT.md)
    max_image_tokens: int = 1280
    output_spec: str | os.PathLike | None = None
    preset: str | None = None  # export/presets.py: omniad | judo | iad-r1 | anomaly-r1; output_spec overrides it
    name: str | None = None
    vision_precision: str | None = None  # None: fp16 for fp16, int8 for int8/int4, else fp32
    overwrite: bool = False
    prefer_dynamo: bool = True
    int4_block_size: int = 32
    int4_accuracy_level: int = 4  # MatMulNBits compute: 4 int8 activations (genai's CPU choice), 0 float32
    int4_keep_lm_head: bool = False  # True leaves the output projection float32 (4x its int4 bytes)
    int4_format: str | None = None  # "matmulnbits" (target ort) or "qdq": DequantizeLinear + MatMul (tensorrt)
    fp32_vision_mlp_blocks: int = 2
    vision_attention: str = "auto"  # "plain": standard ONNX ops only (TensorRT; int4 qdq bundles); graphs.py
    decoder_rotary: str = "table"  # target ort: "table" (MRotaryEmbedding, ORT >= 1.29) or "computed"; graphs.py
    embed_dtype: str = "float32"  # float16 halves embed_tokens.npy; the runtime casts looked-up rows to float32
    quiet: bool = False


class _Progress:
    def __init__(self, quiet: bool):
        self.quiet, self.start = quiet, time.monotonic()

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(f"[export {time.monotonic() - self.start:7.1f}s] {message}", file=sys.stderr, flush=True)


def _check_options(opts: ExportOptions) -> str:
    if opts.precision not in PRECISIONS:
        raise ExportError(f"precision must be one of {PRECISIONS}, got {opts.precision!r}")
    if opts.target not in TARGETS:
        raise ExportError(f"target must be one of {TARGETS}, got {opts.target!r}")
    from .graphs import DECODER_ROTARY

    if opts.decoder_rotary not in DECODER_ROTARY:
        raise ExportError(f"decoder_rotary must be one of {sorted(DECODER_ROTARY)}, got {opts.decoder_rotary!r}")
    if opts.target == "ort" and not opts.prefer_dynamo:
        raise ExportError("target ort needs the dynamo exporter (the legacy one cannot write GroupQueryAttention); "
                          "drop --legacy-exporter or export with --target tensorrt")
    if opts.int4_format is None:
        opts.int4_format = "qdq" if opts.target == "tensorrt" else "matmulnbits"
    if opts.target == "tensorrt":
        if opts.precision == "int8":
            raise ExportError("target tensorrt: int8 bundles use ONNX Runtime's dynamic quantisation, which TensorRT "
                              "cannot parse; export fp32, fp16 or int4 for TensorRT")
        if opts.precision == "int4" and opts.int4_format == "matmulnbits":
            raise ExportError("target tensorrt: int4_format 'matmulnbits' is an ONNX Runtime contrib op; use 'qdq'")
    # int4 "qdq" bundles aim at runtimes that cannot read ONNX Runtime's MatMulInteger: keep their vision fp32
    qdq = opts.precision == "int4" and opts.int4_format == "qdq"
    default = {"fp16": "fp16", "int8": "int8", "int4": "fp32" if qdq else "int8"}.get(opts.precision, "fp32")
    vision = opts.vision_precision or default
    if vision not in VISION_PRECISIONS:
        raise ExportError(f"vision_precision must be one of {VISION_PRECISIONS}, got {vision!r}")
    if opts.target == "tensorrt" and vision == "int8":
        raise ExportError("target tensorrt: an int8 vision graph uses ONNX Runtime's dynamic quantisation, which "
                          "TensorRT cannot parse; use vision_precision fp32 or fp16")
    if opts.embed_dtype not in ("float32", "float16"):
        raise ExportError(f"embed_dtype must be 'float32' or 'float16', got {opts.embed_dtype!r}")
    block = opts.int4_block_size
    if not isinstance(block, int) or block < 16 or block & (block - 1):
        raise ExportError(f"int4_block_size must be a power of two >= 16, got {block!r}")
    if opts.int4_format not in ("matmulnbits", "qdq"):
        raise ExportError(f"int4_format must be 'matmulnbits' or 'qdq', got {opts.int4_format!r}")
    if opts.int4_accuracy_level not in (0, 1, 2, 3, 4):
        raise ExportError(f"int4_accuracy_level must be 0..4, got {opts.int4_accuracy_level!r}")
    if not isinstance(opts.int4_keep_lm_head, bool):
        raise ExportError(f"int4_keep_lm_head must be True or False, got {opts.int4_keep_lm_head!r}")
    if opts.vision_attention not in VISION_ATTENTION:
        raise ExportError(f"vision_attention must be one of {VISION_ATTENTION}, got {opts.vision_attention!r}")
    if not isinstance(opts.fp32_vision_mlp_blocks, int) or opts.fp32_vision_mlp_blocks < 0:
        raise ExportError(f"fp32_vision_mlp_blocks must be an int >= 0, got {opts.fp32_vision_mlp_blocks!r}")
    return vision


def _sample_vision_inputs(model_cfg: dict, names: list[str]):
    """Two images of different grids, sized so that every dynamic axis (patches, groups, group lengths) has its own
    value: the exporter would tie axes of equal sample size together."""
    import torch

    from omniad_edge.preprocess import vision_indices

    v = model_cfg["vision"]
    m, window = v["spatial_merge_size"], v["window_size"]
    win = window // m // v["patch_size"] if window else 2
    grids = [(1, m * (win + 1), m * (2 * win + 1)), (1, m * win, m * (win + 2))]
    idx = vision_indices(grids, m, window, v["patch_size"])
    n = sum(t * h * w for t, h, w in grids)
    dim = 3 * v["temporal_patch_size"] * v["patch_size"] ** 2
    idx["pixel_values"] = torch.randn(n, dim, generator=torch.Generator().manual_seed(0)).numpy()
    return tuple(torch.from_numpy(idx[k]) for k in names)


_VISION_DIMS = {"pixel_values": {0: "patches"}, "rotary_pos_ids": {0: "patches"},
                "image_gather": {0: "images", 1: "image_len"}, "image_scatter": {0: "patches"},
                "window_gather": {0: "windows", 1: "window_len"}, "window_scatter": {0: "patches"},
                VISION_OUTPUT: {0: "tokens"}}


def _export_vision(model, model_cfg, dtype, opts, log, path, threshold):
    from .graphs import VisionGraph
    from .onnx_export import export_graph

    # int4 "qdq" and tensorrt bundles aim at runtimes without ONNX Runtime's contrib ops: "auto" means plain there
    plain = (opts.precision == "int4" and opts.int4_format == "qdq") or opts.target == "tensorrt"
    graph = VisionGraph(model.model.visual, dtype=dtype, fp32_mlp_blocks=opts.fp32_vision_mlp_blocks,
                        attention="plain" if plain else opts.vision_attention, weights="in_place").eval()
    names = graph.input_names
    args = _sample_vision_inputs(model_cfg, names)
    info = export_graph(graph, args, names, [VISION_OUTPUT], _VISION_DIMS, path, opts.prefer_dynamo, log, threshold)
    exporter = info["exporter"]
    return {**info, "attention": graph.attention_forms(exporter), "contrib_ops": graph.contrib_ops(exporter)}


def _decoder_weights(model, dtype, precision: str) -> str:
    """int4, or a checkpoint stored in another dtype (bfloat16 for fp32/fp16): the weights stay as loaded behind a
    Cast and a streamed pass upcasts or quantizes them one at a time (_convert_weights), so the decoder never sits
    in memory converted (15 GB for a 3B in float32); else they are converted in place."""
    return "cast" if precision == "int4" or model.lm_head.weight.dtype != dtype else "in_place"


def _export_decoder(model, model_cfg, dtype, opts, log, path, threshold, packed: bool = True):
    """packed=False keeps separate q/k/v and gate/up projections in the fused decoder (for benchmarks only)."""
    import torch

    from .graphs import DecoderGraph, FusedDecoderGraph
    from .onnx_export import export_graph

    fused = opts.target == "ort"
    weights = _decoder_weights(model, dtype, opts.precision)
    graph = (FusedDecoderGraph(model, dtype=dtype, packed=packed, weights=weights, rotary=opts.decoder_rotary)
             if fused else DecoderGraph(model, dtype=dtype, weights=weights)).eval()
    layers, kv, hd = model_cfg["num_layers"], model_cfg["num_key_value_heads"], model_cfg["head_dim"]
    b, s, p = 2, 5, 3  # sizes > 1 so the exporter keeps batch, seq and past dynamic
    gen = torch.Generator().manual_seed(0)
    kv_shape = (b, kv, p, hd) if fused else (b, p, kv, hd)
    past = tuple(torch.randn(*kv_shape, generator=gen) for _ in range(2 * layers))
    args = (torch.randn(b, s, model_cfg["hidden_size"], generator=gen),
            (torch.arange(s) + p).view(1, 1, s).expand(3, b, s).contiguous(),
            torch.ones(b, p + s, dtype=torch.long), past)
    in_names = decoder_input_names(layers)
    out_names = decoder_output_names(layers, "BNSH" if fused else "BSHD", draft=True)
    embeds, positions, mask = DECODER_INPUTS
    dims = {embeds: {0: "batch", 1: "seq"}, positions: {1: "batch", 2: "seq"}, mask: {0: "batch", 1: "total"},
            LOGITS: {0: "batch"}, DRAFT_LOGITS: {0: "batch", 1: "drafts"}}
    # fused: past and present are the same (B, KV, capacity, hd) buffer when bound as the contract says
    dims.update({n: {0: "batch", 2: "capacity"} if fused else {0: "batch", 1: "past"}
                 for n in in_names[len(DECODER_INPUTS):]})
    dims.update({n: {0: "batch", 2: "capacity"} if fused else {0: "batch", 1: "seq"} for n in out_names[1:-1]})
    try:
        return export_graph(graph, args, in_names, out_names, dims, path, opts.prefer_dynamo, log, threshold,
                            fallback=None if fused else "legacy")
    except ExportError as exc:  # only the fused decoder refuses the fallback
        raise ExportError(f"target ort: the dynamo exporter failed on the decoder ({exc}); export with --target "
                          "tensorrt for the plain decoder") from None


def _convert_weights(source: Path, out: Path, precision: str, opts: ExportOptions, log) -> None:
    """source: a saved float graph; writes the quantized graph, or for fp32/fp16 the one with its casts folded, to
    out, one weight in memory at a time."""
    from .onnx_export import quiet_tools
    from .quantize import fold_casts_file, quantize_int4_file, quantize_int8_file

    if precision in ("fp32", "fp16"):
        log(f"converting the checkpoint's weights to {precision}, one weight at a time")
        fold_casts_file(source, out)
    elif precision == "int8":
        log("quantizing MatMul weights to int8 (dynamic), one weight at a time")
        with quiet_tools():
            quantize_int8_file(source, out)
    elif precision == "int4":
        log(f"quantizing MatMul weights to int4 (blocks of {opts.int4_block_size}), one weight at a time")
        with quiet_tools():
            quantize_int4_file(source, out, opts.int4_block_size, opts.int4_accuracy_level, opts.int4_format,
                               keep_lm_head=opts.int4_keep_lm_head)
    else:
        raise AssertionError(precision)


def _release(module) -> None:
    """Frees the storage of a module's weights once its graph is on disk. Dropping the module is not enough: what
    the exporter leaves behind (torch.export's program, onnxscript's graph) can still hold the parameters into the
    next export and the quantization (an int4 export of an 8-block 3B-width vision tower peaked 352 MiB higher
    without this; benchmarks/results/export-memory-vision3b.md)."""
    import torch

    for tensor in [*module.parameters(), *module.buffers()]:
        tensor.data = torch.empty(0, dtype=tensor.dtype)


def _write_embeddings(model, path: Path, dtype: str = "float32") -> dict:
    import numpy as np

    weight = model.model.language_model.embed_tokens.weight.detach().float().numpy().astype(dtype, copy=False)
    np.save(path, np.ascontiguousarray(weight), allow_pickle=False)
    return {"path": path.name, "dtype": dtype, "shape": list(weight.shape)}


def _place(tmp: Path, out: Path, overwrite: bool) -> None:
    if out.exists():
        if not overwrite:
            raise ExportError(f"output directory {out} already exists (pass overwrite to replace it)")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def export_bundle(checkpoint_dir, out_dir, options: ExportOptions | None = None, **overrides) -> Path:
    """Export a Qwen2.5-VL or Qwen2-VL checkpoint folder to a bundle directory; returns the bundle path.

    Options may be passed as an ExportOptions or as keyword overrides (precision="int4", ...)."""
    import torch

    opts = replace(options) if options is not None else ExportOptions()  # the caller's object stays as given
    for key, value in overrides.items():
        if not hasattr(opts, key):
            raise ExportError(f"unknown export option {key!r}")
        setattr(opts, key, value)
    vision_precision = _check_options(opts)
    log = _Progress(opts.quiet)
    out = Path(out_dir).absolute()
    if out.exists() and not opts.overwrite:
        raise ExportError(f"output directory {out} already exists (pass overwrite to replace it)")
    if not out.parent.is_dir():
        raise ExportError(f"output directory's parent {out.parent} does not exist")

    log(f"checking checkpoint {checkpoint_dir}")
    checkpoint = inspect_checkpoint(checkpoint_dir)
    spec = load_output_spec(opts.output_spec, opts.preset)
    check_spec_tokens(spec["output"], checkpoint.tokenizer_json)
    model_cfg = model_section(checkpoint)
    preprocess = preprocess_section(checkpoint, model_cfg, opts.max_image_tokens)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        log("loading weights with transformers (in the checkpoint's own dtype)")
        model = load_model(checkpoint)
        # embeddings first: the graphs below convert the model's weights in place (lm_head may share this table)
        log("writing embeddings")
        embed = _write_embeddings(model, tmp / "embed_tokens.npy", opts.embed_dtype)
        graph_info = {}
        precisions = {"vision": vision_precision, "decoder": opts.precision}
        exporters = {"vision": _export_vision, "decoder": _export_decoder}
        # graphs waiting for quantization or cast folding, on disk so memory holds one at a time
        scratch = tmp / ".float"
        pending = {}
        with torch.no_grad():
            for graph, precision in precisions.items():
                log(f"exporting {graph} graph ({precision})")
                dtype = torch.float16 if precision == "fp16" else torch.float32
                if precision in ("int8", "int4") or (graph == "decoder" and
                                                      _decoder_weights(model, dtype, precision) == "cast"):
                    scratch.mkdir(exist_ok=True)
                    path = pending[graph] = scratch / f"{graph}.onnx"
                    info = exporters[graph](model, model_cfg, dtype, opts, log, path, 0)
                else:
                    info = exporters[graph](model, model_cfg, dtype, opts, log, tmp / f"{graph}.onnx", None)
                graph_info[graph] = {**info, "precision": precision}
                if graph == "vision":  # its weights are on disk now: free them before the decoder's export
                    _release(model.model.visual)
                    model.model.visual = None
                gc.collect()
        _release(model)
        del model
        gc.collect()
        for graph, source in pending.items():
            _convert_weights(source, tmp / f"{graph}.onnx", precisions[graph], opts, log)
        shutil.rmtree(scratch, ignore_errors=True)
        from .graphs import DRAFT_POSITIONS

        decoder_graph = {"path": "decoder.onnx", "kv_layout": "BSHD", "precision": opts.precision,
                         "draft_logits": DRAFT_POSITIONS}
        if opts.target == "ort":
            from .graphs import DECODER_ROTARY, decoder_contrib_ops, rotary_table_rows

            decoder_graph.update(kv_layout="BNSH", attention="com.microsoft.GroupQueryAttention",
                                 contrib_ops=decoder_contrib_ops(opts.decoder_rotary),
                                 min_onnxruntime=DECODER_ROTARY[opts.decoder_rotary][1])
            if opts.decoder_rotary == "table":
                decoder_graph["rotary_positions"] = rotary_table_rows(model_cfg["max_position"])
        if opts.precision == "int4":
            # accuracy_level only exists for MatMulNBits; the qdq form runs at whatever the reading runtime chooses
            int4 = {"format": opts.int4_format, "block_size": opts.int4_block_size, "symmetric": True,
                    "accuracy_level": opts.int4_accuracy_level if opts.int4_format == "matmulnbits" else None,
                    "lm_head": "fp32" if opts.int4_keep_lm_head else "int4"}
            decoder_graph["int4"] = int4
            graph_info["decoder"].update(block_size=opts.int4_block_size, accuracy_level=int4["accuracy_level"],
                                         int4_format=opts.int4_format, lm_head=int4["lm_head"])
        log("writing tokenizer and manifest")
        shutil.copyfile(checkpoint.tokenizer_json, tmp / "tokenizer.json")
        if checkpoint.chat_template is not None:
            (tmp / "chat_template.jinja").write_text(checkpoint.chat_template, encoding="utf-8")
        log("hashing files")
        manifest = build_manifest(
            name=opts.name or spec["name"] or f"{checkpoint.path.name}-{opts.precision}",
            precision=opts.precision, model=model_cfg, tokens=checkpoint.tokens, preprocess=preprocess, spec=spec,
            graphs={"vision": {"path": "vision.onnx", "precision": vision_precision,
                               "attention": graph_info["vision"]["attention"],
                               **({"contrib_ops": ops} if (ops := graph_info["vision"]["contrib_ops"]) else {})},
                    "decoder": decoder_graph},
            embed=embed, files=file_entries(tmp), exporter=exporter_section(checkpoint.path.name, graph_info),
            has_chat_template=checkpoint.chat_template is not None, target=opts.target)
        write_manifest(tmp, manifest)
        _place(tmp, out, opts.overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"bundle written to {out}")
    return out
