"""Export cost at Qwen2.5-0.5B text size, and precision agreement on the tiny test models.

    nice -n 10 python benchmarks/export_05b.py [--work DIR] [--precisions fp32,int4] [--skip-05b] [--skip-agreement] \
        > benchmarks/results/export-05b.txt

Part 1 (0.5B): writes a random-weight checkpoint with Qwen2.5-0.5B's text stack (hidden 896, 24 layers, 14 heads,
2 KV heads, intermediate 4864, vocab 151,936, tied embeddings) and a small vision tower, then exports it once per
precision, each in its own process so its peak RSS is its own; prints wall time, peak RSS, bundle size, and the
decoder's median step time for one token after a 256-token past (ratio vs fp32 in the same run).
Part 2 (tiny): token agreement of fp16/int8/int4 bundles with the fp32 bundle of the tiny test checkpoint.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

sys.path.insert(0, str(ROOT / "benchmarks"))
from models import write_checkpoint as write_05b_checkpoint  # noqa: E402  (the same 0.5B-sized model compare.py uses)


def _child_export(checkpoint: Path, out: Path, variant: str) -> dict:
    """Export in a child process; returns its wall time and its own peak RSS. variant: a precision, or
    "int4-acc4" (int4 with MatMulNBits accuracy level 4: int8 activations), or "int4-qdq" (DequantizeLinear)."""
    precision, _, extra = variant.partition("-")
    level = int(extra[3:]) if extra.startswith("acc") else 0
    fmt = "qdq" if extra == "qdq" else "matmulnbits"
    code = ("import json, resource, sys, time\n"
            "from export import export_bundle\n"
            "t = time.perf_counter()\n"
            f"export_bundle({str(checkpoint)!r}, {str(out)!r}, precision={precision!r}, overwrite=True, quiet=True,"
            f" int4_accuracy_level={level}, int4_format={fmt!r})\n"
            "print(json.dumps({'wall_s': time.perf_counter() - t,\n"
            "                  'peak_rss_gib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"export {variant} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def _decode_step_ms(bundle: Path, past: int = 256, repeats: int = 15) -> float:
    import numpy as np

    from helpers.reference import ort_session

    m = json.loads((bundle / "manifest.json").read_text())["model"]
    sess = ort_session(bundle / "decoder.onnx")
    feeds = {"inputs_embeds": np.random.default_rng(0).standard_normal((1, 1, m["hidden_size"]), dtype=np.float32),
             "position_ids": np.full((3, 1, 1), past, dtype=np.int64),
             "attention_mask": np.ones((1, past + 1), dtype=np.int64)}
    kv = np.zeros((1, past, m["num_key_value_heads"], m["head_dim"]), dtype=np.float32)
    for i in range(m["num_layers"]):
        feeds[f"past_key.{i}"] = feeds[f"past_value.{i}"] = kv
    sess.run(None, feeds)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def bench_05b(work: Path, precisions: list[str]) -> None:
    checkpoint = work / "qwen05b-random"
    if not (checkpoint / "config.json").exists():
        t = time.perf_counter()
        write_05b_checkpoint(checkpoint)
        print(f"checkpoint written in {time.perf_counter() - t:.1f}s "
              f"(peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB in this process)")
    print(f"{'variant':9} {'wall s':>8} {'peak RSS GiB':>13} {'bundle GiB':>11} {'decode ms/token':>16} {'vs fp32':>8}")
    base = None
    for precision in precisions:
        out = work / f"bundle-05b-{precision}"
        res = _child_export(checkpoint, out, precision)
        size = sum(p.stat().st_size for p in out.iterdir()) / 2**30
        step = _decode_step_ms(out)
        base = base or step
        print(f"{precision:9} {res['wall_s']:8.1f} {res['peak_rss_gib']:13.2f} {size:11.2f} {step:16.1f} "
              f"{step / base:8.2f}", flush=True)


def bench_agreement(work: Path, frames: int = 6, steps: int = 24) -> None:
    """Token agreement vs fp32: free-running (identical prefix length) and teacher-forced (argmax on fp32's
    tokens), over `frames` images of different sizes."""
    import numpy as np

    from export import export_bundle
    from helpers.frames import make_frame
    from helpers.reference import BundleRunner
    from helpers.tiny_models import write_tiny_checkpoint

    checkpoint = work / "tiny"
    if not (checkpoint / "config.json").exists():
        write_tiny_checkpoint(checkpoint)
    runners = {}
    for variant in ("fp32", "fp16", "int8", "int4", "int4-qdq"):
        out = work / f"tiny-{variant}"
        if not out.exists():
            precision, _, fmt = variant.partition("-")
            export_bundle(checkpoint, out, precision=precision, quiet=True, int4_format=fmt or "matmulnbits")
        runners[variant] = BundleRunner(out)
    sizes = [(90 + 37 * i, 260 - 29 * i) for i in range(frames)]
    ref = runners["fp32"]
    print(f"\ntiny model agreement vs fp32 ({frames} frames x {steps} tokens, greedy)")
    print(f"{'precision':9} {'free-run prefix':>16} {'teacher-forced':>15} {'logit rel err (median)':>23}")
    for precision in ("fp16", "int8", "int4", "int4-qdq"):
        run = runners[precision]
        prefix, forced, rel = [], [], []
        for i, size in enumerate(sizes):
            frame = make_frame(*size, seed=100 + i)
            a = ref.generate([ref.prompt([frame])], steps)
            b = run.generate([run.prompt([frame])], steps)
            n = next((k for k, (x, y) in enumerate(zip(a.tokens[0], b.tokens[0])) if x != y), len(a.tokens[0]))
            prefix.append(n / len(a.tokens[0]))
            # teacher forcing: run the quantized decoder on fp32's tokens and compare argmaxes step by step
            logits = _forced_logits(run, run.prompt([frame]), a.tokens[0])
            forced.append(float(np.mean([int(np.argmax(x)) == t for x, t in zip(logits, a.tokens[0])])))
            rel += [float(np.abs(x - y[0]).max() / np.abs(y[0]).max()) for x, y in zip(logits, a.logits)]
        print(f"{precision:9} {np.mean(prefix):16.3f} {np.mean(forced):15.3f} {np.median(rel):23.2e}")


def _forced_logits(runner, prompt, tokens):
    import numpy as np

    from omniad_edge.positions import rope_positions

    m = runner.manifest["model"]
    pos, delta = rope_positions(prompt.input_ids, [im.grid_thw for im in prompt.images], runner.tokens,
                                runner.vcfg["spatial_merge_size"])
    empty = np.zeros((1, 0, m["num_key_value_heads"], m["head_dim"]), dtype=np.float32)
    cache = [(empty, empty)] * m["num_layers"]
    n = len(prompt.input_ids)
    mask = np.ones((1, n), dtype=np.int64)
    logits, cache = runner.step(runner.embed_prompt(prompt)[None], pos[:, None, :], mask, cache)
    out = [logits[0]]
    for k, tok in enumerate(tokens[:-1]):
        mask = np.ones((1, n + k + 1), dtype=np.int64)
        p = np.full((3, 1, 1), n + k + delta, dtype=np.int64)
        logits, cache = runner.step(np.asarray(runner.embed[[tok]], dtype=np.float32)[None], p, mask, cache)
        out.append(logits[0])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "omniad_bench_export")
    ap.add_argument("--precisions", default="fp32,int8,int4,int4-acc4,int4-qdq",
                    help="comma-separated: fp32, fp16, int8, int4, int4-acc4, int4-qdq (the first is the baseline)")
    ap.add_argument("--skip-05b", action="store_true")
    ap.add_argument("--skip-agreement", action="store_true")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"# load average {os.getloadavg()[0]:.2f} at start (shared machines skew times)", flush=True)
    if not args.skip_05b:
        bench_05b(args.work, args.precisions.split(","))
    if not args.skip_agreement:
        bench_agreement(args.work)
    print(f"# load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
