"""Mask refinement and score semantics on the held-out synthetic test split, in one run.

    nice -n 10 python benchmarks/bench_refine.py [--bundle B] [--n 400] [--modes explain detect] [--out NAME]

For each mode, the first --n frames of the test split (training/splits.py) through one Inspector with the bundle's
refine graph: pixel IoU on the anomalous frames with the refined mask and without it (the model's grid upsampled to
the frame, what `refine=False` returns), and the ceiling the ground-truth grid itself reaches; per defect type; the
refine stage's milliseconds (frames with a non-empty grid; normal frames skip it) against the whole frame's in the
same run. Score semantics: frames whose `score >= 0.5` disagrees with the verdict (must be 0), frames whose
`anomaly_probability` does (what `score` used to be), AUROC from both, verdict accuracy. Load average printed and
recorded (the machine may be shared). Writes benchmarks/results/NAME.json and NAME.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def iou(pred: np.ndarray, true: np.ndarray) -> float:
    union = np.logical_or(pred, true).sum()
    return float(np.logical_and(pred, true).sum() / union) if union else 1.0


def run_mode(bundle, mode: str, n: int, threads: int) -> dict:
    from omniad_edge import Inspector, tam
    from training import spec as S
    from training.evaluate import auroc
    from training.splits import generate

    spec = S.load_spec()
    inspector = Inspector(bundle, mode=mode, threads=threads, refine=True, warmup=True)
    rows = []
    for sample in generate("test", n):
        r = inspector.run(sample.image)
        row = {"seed": sample.seed, "defect": sample.defect or "none", "anomalous": bool(sample.anomalous),
               "verdict": bool(r.is_anomalous), "score": r.score, "probability": r.anomaly_probability,
               "refined": bool(r.mask_refined), "ran": bool(r.grid.any()), "refine_ms": r.timings["refine"],
               "total_ms": r.timings["total"]}
        if sample.anomalous:
            coarse = tam.grid_to_mask(r.grid, sample.mask.shape)
            row["iou_coarse"] = iou(coarse, sample.mask)
            row["iou_refined"] = iou(r.mask, sample.mask)
            row["iou_ceiling"] = iou(tam.grid_to_mask(S.sample_grid(spec, sample), sample.mask.shape), sample.mask)
        rows.append(row)
    inspector.close()
    truth = [r["anomalous"] for r in rows]
    bad = [r for r in rows if r["anomalous"]]
    ran = [r["refine_ms"] for r in rows if r["ran"]]  # an empty grid skips the graph

    def pixel(subset):
        return {k: round(float(np.mean([r[f"iou_{k}"] for r in subset])), 4) for k in ("coarse", "refined", "ceiling")}

    out = {
        "mode": mode, "frames": len(rows), "anomalous": len(bad),
        "pixel_iou": pixel(bad),
        "pixel_iou_by_defect": {d: {"n": len(sub), **pixel(sub)}
                                for d in sorted({r["defect"] for r in bad})
                                for sub in [[r for r in bad if r["defect"] == d]]},
        "frames_refined": sum(r["refined"] for r in rows),
        "refine_ms": {"frames_run": len(ran), "median": round(float(np.median(ran)), 2) if ran else None,
                      "p90": round(float(np.percentile(ran, 90)), 2) if ran else None,
                      "mean_over_all_frames": round(float(np.sum(ran) / len(rows)), 2)},
        "total_ms_median": round(float(np.median([r["total_ms"] for r in rows])), 2),
        "score": {
            "verdict_accuracy": round(float(np.mean([r["verdict"] == t for r, t in zip(rows, truth)])), 4),
            "auroc_score": round(auroc([r["score"] for r in rows], truth), 4),
            "auroc_probability": round(auroc([r["probability"] for r in rows], truth), 4),
            "score_disagrees_with_verdict": sum((r["score"] >= 0.5) != r["verdict"] for r in rows),
            "probability_disagrees_with_verdict": sum((r["probability"] >= 0.5) != r["verdict"] for r in rows),
            "normal_verdict_probability_above_half": sum(r["probability"] > 0.5 and not r["verdict"] for r in rows),
            "accuracy_of_probability_at_half": round(float(np.mean(
                [(r["probability"] >= 0.5) == t for r, t in zip(rows, truth)])), 4),
        },
    }
    if ran:
        out["refine_ms"]["share_of_total_median"] = round(out["refine_ms"]["median"] / out["total_ms_median"], 3)
    return out


PHOTOS = ("brick", "gravel", "grass", "camera", "astronaut", "coffee", "chelsea", "rocket", "coins", "moon")


def photo_patches(n: int, side: int = 224):
    """n defect-free patches of the photographs bundled with scikit-image (textures and scenes), grey ones as RGB."""
    from skimage import data

    rng = np.random.default_rng(0)
    images = [np.asarray(getattr(data, name)()) for name in PHOTOS]
    images = [np.repeat(im[..., None], 3, axis=2) if im.ndim == 2 else im[..., :3] for im in images]
    for i in range(n):
        im = images[i % len(images)]
        y, x = (int(rng.integers(0, d - side + 1)) for d in im.shape[:2])
        yield np.ascontiguousarray(im[y:y + side, x:x + side])


def run_photos(bundle, n: int, threads: int) -> dict:
    """Score semantics off the training distribution: the default detect Inspector on photograph patches."""
    from omniad_edge import Inspector

    with Inspector(bundle, threads=threads) as inspector:
        results = [inspector.run(frame) for frame in photo_patches(n)]
    return {"frames": n, "sources": list(PHOTOS), "flagged": sum(r.is_anomalous for r in results),
            "score_disagrees_with_verdict": sum((r.score >= 0.5) != r.is_anomalous for r in results),
            "normal_verdict_probability_above_half": sum(r.anomaly_probability > 0.5 and not r.is_anomalous
                                                         for r in results),
            "anomalous_verdict_probability_below_half": sum(r.anomaly_probability < 0.5 and r.is_anomalous
                                                            for r in results)}


def markdown(result: dict) -> str:
    lines = [f"# Mask refinement and score semantics ({result['bundle']})", "",
             f"load average before {result['loadavg_before']}, after {result['loadavg_after']}; "
             f"{result['machine']}; threads {result['threads']}; a shared machine: see the load average", ""]
    for m in result["modes"]:
        p, s, c = m["pixel_iou"], m["score"], m["refine_ms"]
        lines += [f"## mode {m['mode']}: {m['frames']} test frames, {m['anomalous']} anomalous", "",
                  "| pixel IoU (anomalous frames) | value |", "| --- | ---: |",
                  f"| grid upsampled (no refinement) | {p['coarse']:.3f} |",
                  f"| refined | {p['refined']:.3f} |",
                  f"| ground-truth grid (the grid's ceiling) | {p['ceiling']:.3f} |", "",
                  "| defect | n | grid | refined | ceiling |", "| --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {d} | {v['n']} | {v['coarse']:.3f} | {v['refined']:.3f} | {v['ceiling']:.3f} |"
                  for d, v in m["pixel_iou_by_defect"].items()]
        lines += ["", f"refine stage: ran on {c['frames_run']} frames (refined mask kept on {m['frames_refined']}), "
                  f"median {c['median']} ms, p90 {c['p90']} ms, {c['mean_over_all_frames']} ms per frame over all "
                  f"frames; median frame {m['total_ms_median']} ms end to end "
                  f"(refine = {c.get('share_of_total_median')} of it)", "",
                  "| score semantics | value |", "| --- | ---: |"]
        lines += [f"| {k} | {v} |" for k, v in s.items()]
        lines.append("")
    if result.get("photos"):
        ph = result["photos"]
        lines += [f"## photographs: {ph['frames']} defect-free 224 px patches of scikit-image's "
                  f"{', '.join(ph['sources'])} (detect mode)", "", "| score semantics | value |", "| --- | ---: |"]
        lines += [f"| {k} | {v} |" for k, v in ph.items() if k not in ("frames", "sources")]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default=None, help="bundle with a refine graph (default: the embedded one)")
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--modes", nargs="+", default=["explain", "detect"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--photos", type=int, default=140, help="photograph patches for the score check (0: none)")
    ap.add_argument("--out", default="refine", help="results name under benchmarks/results/")
    args = ap.parse_args(argv)
    before = [round(x, 2) for x in os.getloadavg()]
    print(f"load average {before}", flush=True)
    t0 = time.time()
    modes = []
    for mode in args.modes:
        modes.append(run_mode(args.bundle, mode, args.n, args.threads))
        print(json.dumps(modes[-1], indent=1), flush=True)
    photos = run_photos(args.bundle, args.photos, args.threads) if args.photos else None
    after = [round(x, 2) for x in os.getloadavg()]
    print(f"load average {after}; {time.time() - t0:.0f} s", flush=True)
    result = {"bundle": args.bundle or "embedded default", "n": args.n, "threads": args.threads,
              "loadavg_before": before, "loadavg_after": after,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "modes": modes, "photos": photos}
    out = ROOT / "benchmarks" / "results"
    (out / f"{args.out}.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (out / f"{args.out}.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
