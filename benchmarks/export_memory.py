"""Peak memory of `python -m export --precision int4` (int8 vision graph) on Qwen2.5-VL-3B-width vision towers.

    python benchmarks/export_memory.py --before-code DIR [--blocks 8 16 32] [--variants before no_release new]
        [--max-before-blocks 16] [--wrap "flock -s /work/cpu.lock nice -n 10"] [--work /tmp/export-memory]
        [--out benchmarks/results]

Checkpoints: Qwen2.5-VL-3B's vision tower (hidden 1280, 16 heads, MLP 3420, window 112, full attention every 8th
block) cut to 8 / 16 / 32 blocks, on a tiny text stack (hidden 128, 2 layers, Qwen's vocabulary); random bfloat16
weights as published checkpoints store them, written by benchmarks/fullsize.py's builder. The vision graph of an
int4 bundle is int8 (dynamic), so its export is where whole-graph int8 quantization peaked.

Variants, each export in its own process (peak RSS from os.wait4, so each figure is that process's own):
- before: the exporter's code at DIR (a checkout of the commit before streamed int8, e.g. a worktree of main):
  onnxruntime's quantize_dynamic over the whole float32 graph.
- no_release: this checkout's code with pipeline._release made a no-op (streamed int8, torch weights kept as the
  exporter's objects leave them): what releasing the weights after each export saves.
- new: this checkout's code as it is.
"before" runs only up to --max-before-blocks (its peak grows with the graph; keep it within the machine).
Every row has the load average before and after (the machine is shared). Results: OUT/export-memory-vision3b.json
and .md (rows of a rerun replace the same blocks/variant).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks")]

TEXT_TINY = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, rms_norm_eps=1e-6, max_position_embeddings=32768,
                 rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]})
VARIANTS = ("before", "no_release", "new")
# runs `python -m export ARGS` from the code at CODE (first on sys.path), optionally without pipeline._release
_RUNNER = ("import runpy, sys; sys.path.insert(0, {code!r}); import export.pipeline as p; "
           "{patch}runpy.run_module('export', run_name='__main__', alter_sys=True)")


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _log(msg: str) -> None:
    print(f"[export_memory {time.strftime('%H:%M:%S')}] {msg} (load {_load()})", file=sys.stderr, flush=True)


def vision_config(blocks: int) -> dict:
    from fullsize import MODELS

    vision = dict(MODELS["qwen2.5-vl-3b"][2])
    vision.update(depth=blocks, out_hidden_size=TEXT_TINY["hidden_size"],
                  fullatt_block_indexes=[i for i in vision["fullatt_block_indexes"] if i < blocks])
    return vision


def checkpoint(work: Path, blocks: int) -> Path:
    import fullsize

    hf = work / f"vision3b-{blocks}" / "hf"
    if not (hf / "config.json").is_file():
        name = f"vision3b-{blocks}"
        fullsize.MODELS[name] = ("qwen2_5_vl", TEXT_TINY, vision_config(blocks))
        _log(f"building {hf}")
        fullsize.build(name, hf)
    return hf


def export(hf: Path, bundle: Path, variant: str, code: Path, wrap: list[str]) -> dict:
    import onnx

    patch = "p._release = lambda module: None; " if variant == "no_release" else ""
    runner = _RUNNER.format(code=str(code), patch=patch)
    cmd = [*wrap, sys.executable, "-c", runner, str(hf), str(bundle), "--precision", "int4", "--overwrite"]
    _log(f"{variant} ({code}): export {hf.parent.name}")
    load = _load()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"export failed with status {os.waitstatus_to_exitcode(status)}: {cmd}")
    manifest = json.loads((bundle / "manifest.json").read_text())
    vision = bundle / "vision.onnx"
    sizes = sum(p.stat().st_size for p in bundle.glob("vision.onnx*"))
    ops = {n.op_type for n in onnx.load_model(str(vision), load_external_data=False).graph.node}
    return {"blocks": None, "variant": variant, "code": str(code), "peak_rss_mib": round(usage.ru_maxrss / 1024),
            "wall_s": round(wall, 1), "vision_precision": manifest["graphs"]["vision"]["precision"],
            "vision_int8": "MatMulInteger" in ops, "vision_mib": round(sizes / 2**20),
            "load_average_before": load, "load_average_after": _load()}


def markdown(rows: list[dict], notes: list[str]) -> str:
    lines = ["# Export peak memory: int4 bundle (int8 vision graph), Qwen2.5-VL-3B-width vision tower", "",
             "`python benchmarks/export_memory.py`; checkpoints: hidden 1280, 16 heads, MLP 3420, bfloat16 random "
             "weights, tiny text stack (hidden 128, 2 layers, vocabulary 151,936). Peak RSS of the export process "
             "(os.wait4). before: whole-graph onnxruntime quantize_dynamic (the code at the commit before streamed "
             "int8); no_release: streamed int8, torch weights not released after each export; new: streamed int8 "
             "and released weights.", "",
             "| vision blocks | vision int8 MiB | before MiB | no_release MiB | new MiB | before / new | wall s "
             "(before / no_release / new) | load average (1, 5, 15 min) at start |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for blocks in sorted({r["blocks"] for r in rows}):
        by = {r["variant"]: r for r in rows if r["blocks"] == blocks}
        peak = {v: by[v]["peak_rss_mib"] if v in by else None for v in VARIANTS}
        ratio = f"{peak['before'] / peak['new']:.2f}x" if peak["before"] and peak["new"] else "-"
        walls = " / ".join(str(by[v]["wall_s"]) if v in by else "-" for v in VARIANTS)
        loads = "; ".join(f"{v}: {', '.join(map(str, by[v]['load_average_before']))}" for v in VARIANTS if v in by)
        size = next(iter(by.values()))["vision_mib"]
        lines.append(f"| {blocks} | {size} | " + " | ".join(str(p) if p else "not run" for p in peak.values())
                     + f" | {ratio} | {walls} | {loads} |")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"


def _write(out: Path, res: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "export-memory-vision3b.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "export-memory-vision3b.md").write_text(markdown(res["rows"], res["notes"]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before-code", type=Path, required=True, help="checkout of the code before streamed int8")
    ap.add_argument("--blocks", type=int, nargs="*", default=[8, 16, 32], help="none: only rewrite the results")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--max-before-blocks", type=int, default=16)
    ap.add_argument("--wrap", default="", help="command prefix for each export, e.g. a lock and nice")
    ap.add_argument("--work", type=Path, default=Path("/tmp/export-memory"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints (bundles are always deleted)")
    ap.add_argument("--note", action="append", default=[], help="a line for the results' notes (repeatable)")
    args = ap.parse_args(argv)
    result_json = args.out / "export-memory-vision3b.json"
    res = json.loads(result_json.read_text()) if result_json.is_file() else {"rows": [], "notes": []}
    res["notes"] += [n for n in args.note if n not in res["notes"]]
    _write(args.out, res)
    wrap = shlex.split(args.wrap)
    for blocks in args.blocks:
        hf = checkpoint(args.work, blocks)
        for variant in args.variants:
            if variant == "before" and blocks > args.max_before_blocks:
                _log(f"before at {blocks} blocks skipped (over --max-before-blocks {args.max_before_blocks})")
                continue
            bundle = args.work / f"vision3b-{blocks}" / f"bundle-{variant}"
            code = args.before_code.resolve() if variant == "before" else ROOT
            row = {**export(hf, bundle, variant, code, wrap), "blocks": blocks}
            shutil.rmtree(bundle, ignore_errors=True)
            _log(f"{blocks} blocks {variant}: peak {row['peak_rss_mib']} MiB, {row['wall_s']} s")
            res["rows"] = [r for r in res["rows"] if (r["blocks"], r["variant"]) != (blocks, variant)] + [row]
            _write(args.out, res)
        if not args.keep:
            shutil.rmtree(hf.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
