"""Decoder graph against decoder graph: the plain BSHD decoder (export --target tensorrt, and every bundle before
targets) and the fused GroupQueryAttention decoder (--target ort), one decode step each under plain onnxruntime.

    nice -n 5 python benchmarks/decoder_graphs.py --model reference --model 05b --precision fp32 int4 \
        [--past 140] [--rounds 15] [--steps 20] [--threads 2] [--json FILE]

Models, random weights (a step's time does not depend on the values): `reference` has the shapes of the embedded
reference model (omniad_edge/models/default: hidden 256, 4 layers, 4 heads, 2 kv heads, MLP 704, vocab 640);
`05b` the Qwen2.5-0.5B-sized text stack of benchmarks/models.py (hidden 896, 24 layers, vocab 151,936). Graphs are
exported by the project's exporter (export/pipeline.py) and quantized by export/quantize.py (int4: MatMulNBits,
blocks of 32, accuracy level 4). Each step is bound the way the runtime binds it (backends/onnxruntime.py): plain:
the valid past (1, P, KV, hd) in, the new entries into the next cache slot; fused: the whole (1, KV, M, hd) cache
buffer as past input and present output. Only session.run_with_iobinding is timed. Graphs are timed in alternating
rounds so that load changes hit all of them alike; the ratio fused / plain is per round, then the median.
Node counts: of the ONNX file, and after ONNX Runtime's optimizations (what it runs).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

REFERENCE = dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=4096, vocab_size=640,
                 rope_parameters={"rope_type": "default", "rope_theta": 10.0, "mrope_section": [2, 15, 15]})
FORMS = {"plain": ("tensorrt", True), "fused": ("ort", True), "fused-unpacked": ("ort", False)}


def _model(name: str, layers: int | None = None):
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from models import INIT_STD, TEXT_05B, VISION_SMALL

    text = dict(REFERENCE) if name == "reference" else {**TEXT_05B, "vocab_size": 151936}
    if layers:
        text["num_hidden_layers"] = layers
    vision = {**VISION_SMALL, "out_hidden_size": text["hidden_size"]}
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=name == "05b")
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, INIT_STD)
    cfg = {"num_layers": text["num_hidden_layers"], "num_key_value_heads": text["num_key_value_heads"],
           "head_dim": text["hidden_size"] // text["num_attention_heads"], "hidden_size": text["hidden_size"],
           "vocab_size": text["vocab_size"]}
    return model, cfg


def export_graphs(name: str, forms, precisions, out: Path,
                  layers: int | None = None) -> tuple[dict[str, Path], dict]:
    """Export (and quantize) what is missing under `out`; every fp32 graph first, then the model is dropped so that
    a quantization never holds the torch weights beside the graph's."""
    import gc

    import torch

    from export.onnx_export import quiet_tools, save_onnx
    from export.pipeline import ExportOptions, _export_decoder
    from export.quantize import quantize_int4

    model, cfg = _model(name, layers)
    name = f"{name}-{layers}layers" if layers else name
    for form in forms:
        target, packed = FORMS[form]
        fp32 = out / f"{name}-{form}-fp32.onnx"
        if not fp32.exists():
            with torch.no_grad(), quiet_tools():
                _export_decoder(model, cfg, torch.float32, ExportOptions(target=target), print, fp32, 0, packed)
            gc.collect()
    del model
    gc.collect()
    paths = {}
    for form in forms:
        for precision in precisions:
            path = out / f"{name}-{form}-{precision}.onnx"
            if precision == "int4" and not path.exists():
                with quiet_tools():
                    save_onnx(quantize_int4(out / f"{name}-{form}-fp32.onnx"), path, threshold=0)
                gc.collect()
            paths[f"{form} {precision}"] = path
    return paths, cfg


def _session(path: Path, threads: int, spinning: bool, optimized: Path | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.log_severity_level = 3
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class Step:
    """One decode step of batch 1 after `past` cached positions, bound as the runtime binds it."""

    def __init__(self, path: Path, cfg: dict, past: int, threads: int, spinning: bool):
        self.session = s = _session(path, threads, spinning)
        layers, kv, hd = cfg["num_layers"], cfg["num_key_value_heads"], cfg["head_dim"]
        fused = any(o.name.startswith("present_") for o in s.get_outputs())
        capacity = past + 64
        rng = np.random.default_rng(0)
        shape = (1, kv, capacity, hd) if fused else (1, capacity, kv, hd)
        self.cache = [(rng.standard_normal(shape) * 0.05).astype(np.float32) for _ in range(2 * layers)]
        self.embeds = (rng.standard_normal((1, 1, cfg["hidden_size"])) * 0.05).astype(np.float32)
        self.positions = np.full((3, 1, 1), past, np.int64)
        self.mask = np.ones((1, past + 1), np.int64)
        self.logits = np.empty((1, cfg["vocab_size"]), np.float32)
        io = self.io = s.io_binding()
        io.bind_cpu_input("inputs_embeds", self.embeds)
        io.bind_cpu_input("position_ids", self.positions)
        io.bind_cpu_input("attention_mask", self.mask)
        io.bind_output("logits", "cpu", 0, np.float32, list(self.logits.shape), self.logits.ctypes.data)
        for j, buf in enumerate(self.cache):
            kind = ("key", "value")[j % 2]
            past_name = f"past_{kind}.{j // 2}"
            if fused:
                io.bind_input(past_name, "cpu", 0, np.float32, list(shape), buf.ctypes.data)
                io.bind_output(f"present_{kind}.{j // 2}", "cpu", 0, np.float32, list(shape), buf.ctypes.data)
            else:
                row = buf.strides[1]
                io.bind_input(past_name, "cpu", 0, np.float32, [1, past, kv, hd], buf.ctypes.data)
                io.bind_output(f"new_{kind}.{j // 2}", "cpu", 0, np.float32, [1, 1, kv, hd],
                               buf.ctypes.data + past * row)
        self.run()  # warm-up

    def run(self) -> float:
        start = time.perf_counter()
        self.session.run_with_iobinding(self.io)
        return time.perf_counter() - start


def node_counts(path: Path) -> dict:
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp, "optimized.onnx")
        _session(path, 1, False, optimized)
        after = onnx.load(str(optimized), load_external_data=False)
    return {"file": len(onnx.load(str(path), load_external_data=False).graph.node), "optimized": len(after.graph.node),
            "optimized_ops": sorted({n.op_type for n in after.graph.node})}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", choices=["reference", "05b"], required=True)
    p.add_argument("--precision", nargs="+", choices=["fp32", "int4"], default=["fp32"])
    p.add_argument("--forms", nargs="+", choices=list(FORMS), default=["plain", "fused"])
    p.add_argument("--past", type=int, default=140)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--steps", type=int, default=20, help="steps per graph per round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--spinning", action="store_true", help="ONNX Runtime thread spinning on (default off)")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "omniad_decoder_graphs"))
    p.add_argument("--json", default=None)
    p.add_argument("--export-only", action="store_true", help="write the graphs, time nothing")
    p.add_argument("--layers", type=int, default=None,
                   help="keep only the first N decoder layers (a partial model, named so in the results; for "
                        "machines without the memory to export the whole one)")
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = {"past": args.past, "threads": args.threads, "spinning": args.spinning, "rounds": args.rounds,
           "steps_per_round": args.steps, "loadavg_start": os.getloadavg(), "models": {}}
    import onnxruntime

    out["onnxruntime"] = onnxruntime.__version__
    for name in args.model:
        paths, cfg = export_graphs(name, args.forms, args.precision, work, args.layers)
        if args.export_only:
            continue
        label = f"{name}-{args.layers}layers" if args.layers else name
        result = out["models"][label] = {}
        for precision in args.precision:
            keys = [f"{form} {precision}" for form in args.forms]
            steps = {k: Step(paths[k], cfg, args.past, args.threads, args.spinning) for k in keys}
            times = {k: [] for k in keys}
            ratios = {k: [] for k in keys[1:]}
            load = os.getloadavg()
            for _ in range(args.rounds):
                medians = {}
                for k in keys:
                    ts = [steps[k].run() for _ in range(args.steps)]
                    times[k] += ts
                    medians[k] = statistics.median(ts)
                for k in keys[1:]:
                    ratios[k].append(medians[k] / medians[keys[0]])
            for k in keys:
                entry = {"median_ms": statistics.median(times[k]) * 1e3, "min_ms": min(times[k]) * 1e3,
                         "steps": len(times[k]), "nodes": node_counts(paths[k])}
                if k in ratios:
                    entry["ratio_vs_plain"] = statistics.median(ratios[k])
                    entry["min_ratio_vs_plain"] = min(times[k]) / min(times[keys[0]])
                result[k] = entry
                print(f"{label:11s} {k:22s} median {entry['median_ms']:8.3f} ms  min {entry['min_ms']:8.3f} ms  "
                      f"nodes {entry['nodes']['file']:4d} file / {entry['nodes']['optimized']:4d} optimized"
                      + (f"  x{entry['ratio_vs_plain']:.3f} vs {keys[0]}" if k in ratios else "")
                      + f"  (load {load[0]:.2f})", flush=True)
            del steps
    out["loadavg_end"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        Path(args.json).with_suffix(".md").write_text(markdown(out))
    return 0


def markdown(out: dict) -> str:
    spinning = "on" if out["spinning"] else "off"
    lines = ["### Decoder graph step: plain (BSHD, --target tensorrt) vs fused (GroupQueryAttention, --target ort)",
             "",
             f"onnxruntime {out['onnxruntime']}, {out['threads']} threads, spinning {spinning}, batch 1,"
             f" one new token after {out['past']} cached positions; {out['rounds']} alternating rounds of "
             f"{out['steps_per_round']} steps per graph. Load average at start {out['loadavg_start'][0]:.2f}, at end "
             f"{out['loadavg_end'][0]:.2f} (shared machine). Ratio: median over rounds of fused/plain round medians; "
             "min ratio: fastest step against fastest step.", "",
             "| model | graph | median ms | min ms | ratio vs plain | min ratio "
             "| nodes (file / after ORT optimization) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for model, graphs in out["models"].items():
        for name, e in graphs.items():
            ratio = f"{e['ratio_vs_plain']:.3f}" if "ratio_vs_plain" in e else "1"
            mratio = f"{e['min_ratio_vs_plain']:.3f}" if "min_ratio_vs_plain" in e else "1"
            lines.append(f"| {model} | {name} | {e['median_ms']:.3f} | {e['min_ms']:.3f} | {ratio} | {mratio} | "
                         f"{e['nodes']['file']} / {e['nodes']['optimized']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
