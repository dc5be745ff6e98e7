"""Vision time and peak extra memory vs image size: the Inspector's vision graph against transformers' model.visual.

A Qwen2.5-VL checkpoint with Qwen2.5-VL-3B's vision width (hidden 1280, 16 heads, MLP 3420, out 2048) cut to 4
blocks (window blocks 0-2, full block 3), a tiny text stack and random weights (std 0.02), exported with
`--max-image-tokens 1280` at three vision precisions. Every measurement runs in its own subprocess with 2 threads:
one warm-up call, then `--repeats` timed calls (median); peak extra memory is the largest resident set seen by a
5 ms sampler during the calls minus the resident set just before them (weights and sessions already loaded).
`--rounds` subprocesses per kind and size, interleaved (transformers, fp32, fp16, int8, transformers, ...); the
table gives the medians over rounds.

    python benchmarks/vision_scaling.py --work /tmp/vision-scaling --out benchmarks/results/vision-scaling

writes OUT.json and OUT.md. The load average is recorded with every row: the machine is shared.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

SIDES = (448, 672, 896, 1008)
PRECISIONS = ("fp32", "fp16", "int8")
TEXT = dict(hidden_size=2048, intermediate_size=256, num_hidden_layers=1, num_attention_heads=16,
            num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]})
VISION_3B_4BLOCKS = dict(depth=4, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                         patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                         fullatt_block_indexes=[3], tokens_per_second=2)
THREADS = 2


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakRss:
    """Largest resident set seen while the block runs, sampled every 5 ms by a thread."""

    def __enter__(self):
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def extra_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def _frame(side: int) -> np.ndarray:
    from helpers.frames import make_frame

    return make_frame(side, side, seed=side)


def _time_calls(call, repeats: int) -> dict:
    """Median time of `repeats` calls after a warm-up; the peak counts from before the warm-up (ONNX Runtime's
    arena keeps what the first call took)."""
    times = []
    with _PeakRss() as peak:
        out = call()
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = call()
            times.append(time.perf_counter() - t0)
    return {"s": statistics.median(times), "times": times, "peak_extra_mb": peak.extra_mb, "out": out}


def child_ours(bundle: Path, side: int, repeats: int, save: Path) -> dict:
    from omniad_edge import Inspector
    from omniad_edge.preprocess import concat_images, preprocess_image

    inspector = Inspector(str(bundle), threads=THREADS)
    vision = inspector.bundle.model["vision"]
    image = preprocess_image(_frame(side), inspector.bundle.preprocess)
    inputs = concat_images([image], vision["spatial_merge_size"], vision["window_size"], vision["patch_size"])
    res = _time_calls(lambda: inspector.backend.encode_image(inputs), repeats)
    out = np.asarray(res.pop("out"), np.float32)
    np.save(save, out)
    return {**res, "tokens": int(out.shape[0]), "attention": inspector.bundle.graphs["vision"].get("attention")}


def child_transformers(checkpoint: Path, bundle: Path, side: int, repeats: int, save: Path) -> dict:
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from omniad_edge import load_bundle
    from omniad_edge.preprocess import preprocess_image

    torch.set_num_threads(THREADS)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    visual = model.model.visual
    image = preprocess_image(_frame(side), load_bundle(bundle).preprocess)  # the same pixels as ours
    pixels, grid = torch.from_numpy(image.pixel_values), torch.tensor([image.grid_thw])

    def call():
        with torch.no_grad():
            return visual(pixels, grid_thw=grid).pooler_output

    res = _time_calls(call, repeats)
    out = res.pop("out").numpy()
    np.save(save, out)
    return {**res, "tokens": int(out.shape[0]), "attn_implementation": model.config.vision_config._attn_implementation}


def _child(args: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def build(work: Path) -> dict[str, Path]:
    from export import export_bundle
    from helpers.tiny_models import write_tiny_checkpoint

    checkpoint = work / "hf"
    if not (checkpoint / "config.json").exists():
        write_tiny_checkpoint(checkpoint, text=TEXT, vision=VISION_3B_4BLOCKS, init_std=0.02)
        processor = json.loads((checkpoint / "preprocessor_config.json").read_text())
        processor["max_pixels"] = 28 * 28 * 1280  # Qwen2.5-VL's own limit; the tiny helper caps at 256 tokens
        (checkpoint / "preprocessor_config.json").write_text(json.dumps(processor, indent=1))
    bundles = {}
    for precision in PRECISIONS:
        out = bundles[precision] = work / f"bundle-{precision}"
        if not (out / "manifest.json").exists():
            t0 = time.monotonic()
            export_bundle(checkpoint, out, quiet=True, precision=precision, max_image_tokens=1280)
            print(f"exported {precision} in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    return {"checkpoint": checkpoint, **bundles}


def _agreement(a: np.ndarray, b: np.ndarray) -> dict:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return {"max_abs": float(np.abs(a - b).max()), "max_abs_rel": float(np.abs(a - b).max() / np.abs(b).max()),
            "cosine": float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/vision-scaling"))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--repeats", type=int, default=2, help="timed calls per subprocess (after one warm-up)")
    ap.add_argument("--rounds", type=int, default=2, help="subprocesses per kind and size (medians taken)")
    ap.add_argument("--sides", type=int, nargs="+", default=list(SIDES))
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        kind, *rest = json.loads(args.child)
        if kind == "ours":
            res = child_ours(Path(rest[0]), int(rest[1]), int(rest[2]), Path(rest[3]))
        else:
            res = child_transformers(Path(rest[0]), Path(rest[1]), int(rest[2]), int(rest[3]), Path(rest[4]))
        print(json.dumps(res))
        return

    args.work.mkdir(parents=True, exist_ok=True)
    paths = build(args.work)
    rows = []
    kinds = ("transformers", *PRECISIONS)
    for side in args.sides:
        row = {"frame": f"{side}x{side}", "load_before": os.getloadavg()}
        expected = {448: 256, 672: 576, 896: 1024, 1008: 1225}.get(side)
        save = {k: args.work / f"out-{k}-{side}.npy" for k in kinds}
        runs = {k: [] for k in kinds}
        for _ in range(args.rounds):  # interleaved, so a change of load hits every kind alike
            runs["transformers"].append(_child(["hf", str(paths["checkpoint"]), str(paths["fp32"]), side,
                                                args.repeats, str(save["transformers"])]))
            for precision in PRECISIONS:
                runs[precision].append(_child(["ours", str(paths[precision]), side, args.repeats,
                                               str(save[precision])]))
        for k in kinds:
            row[k] = {**runs[k][0], "s": statistics.median(r["s"] for r in runs[k]),
                      "peak_extra_mb": statistics.median(r["peak_extra_mb"] for r in runs[k]),
                      "rounds": [{"s": r["s"], "peak_extra_mb": r["peak_extra_mb"]} for r in runs[k]]}
            row[k].pop("times")
        ref, fp32 = np.load(save["transformers"]), np.load(save["fp32"])
        row["fp32_vs_transformers"] = _agreement(fp32, ref)
        for precision in PRECISIONS[1:]:
            row[f"{precision}_vs_fp32"] = _agreement(np.load(save[precision]), fp32)
        row["tokens"] = row["fp32"]["tokens"]
        if expected and row["tokens"] != expected:
            raise SystemExit(f"{side}x{side} gave {row['tokens']} image tokens, not {expected}: check max_pixels")
        row["load_after"] = os.getloadavg()
        for k in PRECISIONS:
            row[k]["time_ratio"] = row[k]["s"] / row["transformers"]["s"]
            row[k]["peak_ratio"] = row[k]["peak_extra_mb"] / row["transformers"]["peak_extra_mb"]
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("frame", "tokens", "load_before", "load_after")}),
              {k: (round(row[k]["s"], 2), round(row[k]["peak_extra_mb"])) for k in kinds}, flush=True)
    result = {"checkpoint": {"text": TEXT, "vision": VISION_3B_4BLOCKS}, "threads": THREADS, "repeats": args.repeats,
              "rounds": args.rounds,
              "rows": rows, "load_average_end": os.getloadavg(),
              "note": "shared machine: other sessions were running; ratios compare runs made one after another"}
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
        args.out.with_suffix(".md").write_text(_markdown(result))
    print(_markdown(result))


def _markdown(result: dict) -> str:
    lines = ["| frame | image tokens | load (1 min) | transformers s / peak MB | omniad_edge fp32 s / peak MB | "
             "time ratio | peak ratio | fp16 s / peak MB | int8 s / peak MB | fp16 vs fp32 (max abs, cos) | "
             "int8 vs fp32 (max abs, cos) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in result["rows"]:
        t, f, h, q = r["transformers"], r["fp32"], r["fp16"], r["int8"]
        lines.append(
            f"| {r['frame']} | {r['tokens']} | {r['load_before'][0]:.2f} | {t['s']:.2f} / {t['peak_extra_mb']:.0f} | "
            f"{f['s']:.2f} / {f['peak_extra_mb']:.0f} | {f['time_ratio']:.2f} | {f['peak_ratio']:.2f} | "
            f"{h['s']:.2f} / {h['peak_extra_mb']:.0f} | {q['s']:.2f} / {q['peak_extra_mb']:.0f} | "
            f"{r['fp16_vs_fp32']['max_abs']:.2g}, {r['fp16_vs_fp32']['cosine']:.6f} | "
            f"{r['int8_vs_fp32']['max_abs']:.2g}, {r['int8_vs_fp32']['cosine']:.6f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
