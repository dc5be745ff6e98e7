"""`omniad-edge adapt` on a real grey photograph texture, evaluated with defects it never saw in training.

    nice -n 10 python benchmarks/adapt_texture.py --texture brick --stages 5 10 20 30 --out runs/adapt-brick

1. 60 good 224x224 patches are cut from the left part of one of scikit-image's bundled textures (a 512x512 grey
   photograph); the held-out patches come from the right 224 columns, which no training patch overlaps.
2. `adapt` runs with a CPU-time budget (--clock cpu, one torch thread) in stages of ONE learning-rate schedule as
   long as the last stage (--schedule-minutes): each stage resumes the run, trains up to the next budget, exports
   and evaluates; the stages give the learning curve of that one run.
3. Every stage's bundle (and the embedded model before it) is scored on 40 held-out good patches and 40 with defects
   drawn by THIS file's generator (unseen_defect): nothing in training draws these. The two training generators
   closest in kind are other maths, written apart from this file: training/anomalies.py's `resample` moves an
   irregular blob's pixels by a random affine map or a smooth random displacement field (bilinear), where `warp` here
   pushes an ellipse's pixels radially out from its centre (nearest pixel); its `frequency` sharpens, boosts or cuts
   a band of box-filtered scales, pixelates or median-filters a blob, where `blur` here blends a Gaussian blur into an
   ellipse. Nothing in training darkens by a multiplicative ellipse or adds glare. Pixel IoU of the defects is given
   from the grid alone and refined by the bundle's refine graph. The final bundle is also scored on the first 400
   frames of the reference model's synthetic test split.
Writes OUT/adapt-texture-<texture>.json and .md (copy them to benchmarks/results/); prints os.getloadavg().
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

UNSEEN = ("warp", "darken", "blur", "glare")


def _texture(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    if img.ndim == 3:
        img = (img[..., :3].astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32)).astype(np.uint8)
    return img


def _rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


def train_patches(img: np.ndarray, n: int, seed: int) -> list[np.ndarray]:
    """Patches within the columns left of the held-out strip (the right 224 columns): no pixel in common."""
    rng = np.random.default_rng([seed, 1])
    h, w = img.shape
    limit = w - 2 * 224
    return [img[y:y + 224, x:x + 224] for y, x in zip(rng.integers(0, h - 224 + 1, n), rng.integers(0, limit + 1, n))]


def held_patches(img: np.ndarray, n: int, seed: int) -> list[np.ndarray]:
    """Patches from the right 224 columns, with a random flip / quarter turn for variety."""
    rng = np.random.default_rng([seed, 2])
    h, w = img.shape
    out = []
    for y in rng.integers(0, h - 224 + 1, n):
        p = img[y:y + 224, w - 224:]
        k = int(rng.integers(8))
        p = np.rot90(p[:, ::-1] if k & 4 else p, k & 3)
        out.append(np.ascontiguousarray(p))
    return out


def _ellipse(rng, h, w, lo=0.06, hi=0.16):
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    ry, rx = rng.uniform(lo, hi, 2) * min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2), cy, cx, ry, rx


def unseen_defect(patch: np.ndarray, kind: str, rng) -> tuple[np.ndarray, np.ndarray]:
    """One defect no training generator draws -> (grey patch, bool mask of the changed region)."""
    from PIL import Image, ImageFilter

    h, w = patch.shape
    f = patch.astype(np.float32)
    d, cy, cx, ry, rx = _ellipse(rng, h, w)
    soft = np.clip(1.0 - d, 0.0, 1.0)  # 1 at the centre, 0 at the rim
    if kind == "warp":  # a dent: pixels pulled towards the centre
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        strength = rng.uniform(0.6, 0.9) * soft
        sy, sx = yy + (cy - yy) * strength * -1.0, xx + (cx - xx) * strength * -1.0
        sy, sx = np.clip(sy, 0, h - 1).astype(int), np.clip(sx, 0, w - 1).astype(int)
        out = f[sy, sx]
    elif kind == "darken":  # a dark smudge on the dark and light parts alike
        out = f * (1.0 - rng.uniform(0.35, 0.6) * np.clip(soft * 2.0, 0, 1))
    elif kind == "blur":  # an out-of-focus or smeared patch
        blurred = np.asarray(Image.fromarray(patch).filter(ImageFilter.GaussianBlur(rng.uniform(3, 6))), np.float32)
        a = np.clip(soft * 3.0, 0, 1)
        out = f * (1 - a) + blurred * a
    elif kind == "glare":  # a specular spot
        out = f + rng.uniform(90, 150) * np.clip(soft * 1.5, 0, 1) ** 2
    else:
        raise ValueError(kind)
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    mask = (np.abs(out.astype(np.int16) - patch.astype(np.int16)) > 10) & (d < 1.0)
    return out, mask


def held_out_set(img: np.ndarray, n: int, seed: int):
    """n good patches and n with an unseen defect (kinds in turn) -> training.userdata.Labeled items."""
    from training.userdata import Labeled

    rng = np.random.default_rng([seed, 3])
    items = []
    good = held_patches(img, n, seed)
    bad = held_patches(img, n, seed + 1000)
    for p in good:
        items.append(Labeled(_rgb(p), np.zeros(p.shape, bool), None, "held-out"))
    for i, p in enumerate(bad):
        for _ in range(20):
            out, mask = unseen_defect(p, UNSEEN[i % len(UNSEEN)], rng)
            if mask.sum() >= 150:
                break
        items.append(Labeled(_rgb(out), mask, UNSEEN[i % len(UNSEEN)], "held-out"))
    return items


def synthetic_split(bundle: Path, n: int) -> dict:
    from training.evaluate import EdgeRunner, evaluate

    return evaluate([EdgeRunner(bundle, threads=1)], n, progress=False)["summary"]["edge"]["all"]


def evaluate_bundle(bundle: Path, items, old_n: int) -> dict:
    from training.adapt import item_metrics, pixel_ious, predict_items
    from training.evaluate import EdgeRunner

    runner = EdgeRunner(bundle, threads=1)
    rows = predict_items(runner, items)
    res = {"texture": item_metrics(rows), "pixel_iou": pixel_ious(bundle, items, [r["grid"] for r in rows])}
    for kind in UNSEEN:
        res[f"texture+{kind}"] = item_metrics([r for r in rows if r["defect"] in (None, kind)])
    if old_n:
        res["synthetic_test_split"] = synthetic_split(bundle, old_n)
    return res


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--texture", default="brick", help="a scikit-image texture: brick, gravel, grass")
    ap.add_argument("--n-train", type=int, default=60)
    ap.add_argument("--n-held", type=int, default=40, help="held-out patches per class (good, defective)")
    ap.add_argument("--stages", type=float, nargs="+", default=[5, 10, 20, 30], help="CPU minutes of training at "
                    "which the run is exported and evaluated (one schedule as long as the last)")
    ap.add_argument("--schedule-minutes", type=float, default=None, help="the learning-rate schedule's length "
                    "(default: the last stage); a comparison run stopped early keeps the full run's schedule")
    ap.add_argument("--no-augment", dest="augment", action="store_false", help="adapt without --augment")
    ap.add_argument("--refine-steps", type=int, default=200)
    ap.add_argument("--old-n", type=int, default=400, help="synthetic test frames for the final bundle (0: skip)")
    ap.add_argument("--keep-old-surfaces", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/adapt-texture"))
    ap.add_argument("--resume", action="store_true", help="continue the run in OUT: keep the stages already in its "
                    "JSON, train on from its state for the later ones")
    args = ap.parse_args(argv)
    from PIL import Image

    img = _texture(args.texture)
    good = args.out / "good"
    good.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(train_patches(img, args.n_train, args.seed)):
        if not (good / f"{args.texture}_{i:03d}.png").is_file():  # --resume: the run's own files stay
            Image.fromarray(p).save(good / f"{args.texture}_{i:03d}.png")
    items = held_out_set(img, args.n_held, args.seed)
    print("load average", os.getloadavg(), flush=True)
    import omniad_edge

    embedded = Path(omniad_edge.__file__).resolve().parent / "models" / "default"
    out = args.out / f"adapt-texture-{args.texture}.json"
    if args.resume and out.is_file():
        result = json.loads(out.read_text(encoding="utf-8"))
    else:
        result = {"texture": args.texture, "n_train": args.n_train, "n_held_per_class": args.n_held,
                  "unseen_defects": list(UNSEEN), "keep_old_surfaces": args.keep_old_surfaces,
                  "augment": args.augment, "schedule_minutes": args.schedule_minutes or max(args.stages),
                  "refine_steps": args.refine_steps,
                  "load_average_start": os.getloadavg(), "stages": []}
    if "embedded" not in result:
        result["embedded"] = evaluate_bundle(embedded, items, 0)
        print("embedded:", json.dumps(result["embedded"]["texture"]), flush=True)
    bundle = args.out / "bundle"
    done = max([s["train_cpu_minutes"] for s in result["stages"]], default=0)
    stages = [m for m in args.stages if m > done]
    if stages:
        result.pop("stopped_after_stage", None)  # a resumed run goes on past the stage it was stopped after
    for k, minutes in enumerate(stages):
        cmd = [sys.executable, "-m", "training.adapt", str(good), "--out", str(bundle), "--minutes", str(minutes),
               "--clock", "cpu", "--threads", "1", "--overwrite", "--allow-worse", "--quiet",
               "--schedule-minutes", str(result["schedule_minutes"]), "--refine-steps", str(args.refine_steps),
               "--keep-old-surfaces", str(args.keep_old_surfaces), "--seed", str(args.seed)]
        cmd += ["--augment"] if result["augment"] else []
        if k == 0 and not args.resume:
            cmd.append("--restart")
        report_path = bundle.with_name(bundle.name + ".adapt") / "report.json"
        earlier = json.loads(report_path.read_text()) if args.resume and k == 0 and report_path.is_file() else None
        if earlier and bundle.is_dir() and abs(earlier["train_minutes"] - minutes) < 0.05:
            # an adapt call of an interrupted benchmark finished this stage: take its bundle and its own figures
            stage = {"train_cpu_minutes": minutes, "adapt_call_cpu_minutes": earlier["cpu_minutes_this_call"],
                     "adapt_call_wall_minutes": earlier["wall_minutes_this_call"],
                     "load_average": earlier["load_average"]}
        else:
            cpu0, t0 = _children_cpu(), time.monotonic()
            subprocess.run(cmd, check=True, cwd=ROOT)
            stage = {"train_cpu_minutes": minutes, "adapt_call_cpu_minutes": round((_children_cpu() - cpu0) / 60, 2),
                     "adapt_call_wall_minutes": round((time.monotonic() - t0) / 60, 2),
                     "load_average": os.getloadavg()}
        report = json.loads(report_path.read_text())
        stage["steps"] = report["steps"]
        stage["adapt_held_out"] = report["adapted"]
        stage["adapt_refine"] = report["refine"]
        last = k == len(stages) - 1
        stage["eval"] = evaluate_bundle(bundle, items, args.old_n if last else 0)
        print(f"stage {minutes} CPU min:", json.dumps({"steps": stage["steps"], **stage["eval"]["texture"],
                                                      "pixel_iou": stage["eval"]["pixel_iou"]}), flush=True)
        result["stages"].append(stage)
        result["curve"] = report["curve"]
        result["load_average_end"] = os.getloadavg()
        out.write_text(json.dumps(result, indent=1), encoding="utf-8")  # a stage at a time: --resume goes on
    final = result["stages"][-1] if result["stages"] else None
    if final and args.old_n and "synthetic_test_split" not in final["eval"]:
        # a run stopped before its last planned stage, resumed with fewer --stages: its last bundle gets the final
        # evaluation (OUT/bundle is still that stage's: adapt replaces it only when a stage completes)
        final["eval"]["synthetic_test_split"] = synthetic_split(bundle, args.old_n)
        result["stopped_after_stage"] = final["train_cpu_minutes"]
    result["adapt_cpu_minutes_total"] = round(sum(s["adapt_call_cpu_minutes"] for s in result["stages"]), 2)
    result["load_average_end"] = os.getloadavg()
    out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))


def markdown(r: dict) -> str:
    f = lambda v: "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"  # noqa: E731

    def row(name, m, px=None):
        cells = [name, f(m.get("auroc")), f(m.get("verdict_acc")), f(m.get("grid_iou"))]
        if px is not None:
            n_good = m["n"] - m["n_anomalous"]
            cells += [f"{m['good_flagged']}/{n_good}" if "good_flagged" in m else "-", f(px["grid"]),
                      f(px["refined"])]
        return "| " + " | ".join(cells) + " |"

    lines = [f"# adapt on scikit-image `{r['texture']}`: {r['n_train']} good 224x224 patches, held-out patches with "
             f"unseen defects ({', '.join(r['unseen_defects'])})", "",
             f"Shared 2-core machine (other sessions running); load average {r['load_average_start']} at the start, "
             f"{r['load_average_end']} at the end. Training budget in CPU minutes of the adapt process (one torch "
             f"thread), one learning-rate schedule of {r.get('schedule_minutes', '-')} CPU minutes evaluated at each "
             f"stage; {'--augment' if r.get('augment', True) else 'no --augment'}; keep-old-surfaces "
             f"{r['keep_old_surfaces']}; refine graph fine-tuned {r.get('refine_steps', '-')} steps. All adapt calls "
             f"together: {r['adapt_cpu_minutes_total']} CPU minutes (training + export + refine + held-out "
             "evaluation).", "",
             *([f"The run was stopped after the {r['stopped_after_stage']} CPU-minute stage (the machine's share did "
                "not allow more in the session): later stages of the schedule were not reached.", ""]
               if "stopped_after_stage" in r else []),
             *[line for note in r.get("notes", []) for line in (note, "")],  # written by hand into the JSON
             f"## Held-out texture patches ({r['n_held_per_class']} good + {r['n_held_per_class']} defective)", "",
             "Good flagged: held-out good patches with an anomalous verdict. Pixel IoU: the defects' masks against "
             "the grid's cells and against the bundle's refined mask.", "",
             "| model | AUROC | verdict accuracy | grid IoU | good flagged | pixel IoU, grid | pixel IoU, refined |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
             row("embedded model (before adapt)", r["embedded"]["texture"], r["embedded"].get("pixel_iou"))]
    for s in r["stages"]:
        lines.append(row(f"adapted, {s['train_cpu_minutes']} CPU min ({s['steps']} steps)", s["eval"]["texture"],
                         s["eval"].get("pixel_iou")))
    refines = [(s["train_cpu_minutes"], s["adapt_refine"]) for s in r["stages"] if s.get("adapt_refine")]
    if refines:
        lines += ["", "Refine graph at each stage, chosen on adapt's own held-out frames (held-out good training-set "
                  "images with drawn defects; pixel IoU from the adapted model's grids): kept only if the fine-tuned "
                  "graph beats the grid and the old graph.", "",
                  "| stage (CPU min) | defects | pixel IoU, grid | old graph | fine-tuned | kept |",
                  "| ---: | ---: | ---: | ---: | ---: | --- |"]
        lines += [f"| {m} | {x['n']} | {f(x['grid'])} | {f(x['old'])} | {f(x['fine_tuned'])} | {x['kept']} |"
                  for m, x in refines]
    last = r["stages"][-1]["eval"]
    lines += ["", "Per unseen defect kind (final bundle; the good patches + that kind):", "",
              "| kind | AUROC | verdict accuracy | grid IoU |", "| --- | ---: | ---: | ---: |"]
    lines += [row(k, last[f"texture+{k}"]) for k in r["unseen_defects"]]
    if "synthetic_test_split" in last:
        m = last["synthetic_test_split"]
        lines += ["", f"## The reference model's synthetic test split (first {m['n']} frames), final bundle", "",
                  "| AUROC | verdict accuracy | grid IoU |", "| ---: | ---: | ---: |",
                  f"| {m['auroc']:.3f} | {m['verdict_acc']:.3f} | {m['grid_iou']:.3f} |"]
    lines += ["", "## Learning curve (training loss, mean of 10 steps)", "", "| step | CPU minutes | loss |",
              "| ---: | ---: | ---: |"]
    curve = r["curve"]
    for c in curve[:: max(1, len(curve) // 20)] + ([curve[-1]] if curve else []):
        lines.append(f"| {c['step']} | {c['minutes']:.1f} | {c['loss']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
