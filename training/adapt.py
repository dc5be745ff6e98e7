"""`omniad-edge adapt NORMAL_DIR --out BUNDLE`: fine-tune the reference model on a user's part, on the CPU.

    omniad-edge adapt good/ --out station_bundle --minutes 20 [--defects mvtec/bottle] [--from BUNDLE_OR_HF_DIR]

1. Read the good images (and an MVTec-layout defect set) and hold a fraction out (training/samples.py).
2. Start from a bundle (default: the embedded one; its weights are read back, training/bundle_weights.py) or a
   Hugging Face checkpoint folder of the reference architecture.
3. Train for --minutes: each batch mixes the part's samples (good, real defects, drawn defects) with a fraction of
   the reference model's own synthetic frames (--keep-old-surfaces, default 0.25; 0 forgets them).
4. Export a bundle (the project's exporter), evaluate it and the starting model on the held-out frames, print the
   table (AUROC, verdict accuracy, grid IoU), and move the bundle into place only if it is better than the starting
   model (--allow-worse writes it anyway). A run too short to learn anything is refused, and said so.
5. When the starting bundle has a mask refinement graph (omniad_edge/refine.py), it is fine-tuned on drawn defects
   of the part (--refine-steps) and scored by pixel IoU on the held-out frames' defects, from the adapted model's own
   grids; the fine-tuned graph goes into the bundle only if it beats both the grid alone and the old graph there,
   else the old graph does. The report gives all three.

State lives in a work folder beside the output (OUT.adapt/): a checkpoint every --ckpt-minutes and on Ctrl-C; the
same command resumes it (the data each step sees depends only on the seed and the step), --minutes N more than
already spent continues a finished run, --restart discards it. The learning-rate schedule (warm-up, cosine over
--schedule-minutes, default the first call's --minutes) is stored in the checkpoint, so a resumed or continued run
follows the same schedule: one 30-minute schedule can be stopped, exported and evaluated at 5, 10 and 20 minutes.
The bundle is written to a temporary folder and renamed into place, so OUT is either the old bundle or the complete
new one.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from omniad_edge.errors import AdaptError, BundleError

from . import spec as S
from .samples import SampleBuilder, grid, load_part, part_spec
from .userdata import Labeled

__all__ = ["main", "build_parser", "predict_items", "item_metrics", "evaluate_items", "pixel_ious", "MIN_STEPS"]

MIN_STEPS = 20  # fewer optimizer steps than this cannot move the model; the run is refused, not shipped
WARMUP_STEPS = 10
GENERATOR_NAMES = ["painted", "cutpaste", "texture", "resample", "frequency"]


def build_parser(prog: str = "omniad-edge adapt") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    add_arguments(p)
    return p


DESCRIPTION = ("Fine-tune the reference model on your part (good images, optionally an MVTec AD-layout defect set) "
               "on the CPU and export a bundle.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = DESCRIPTION
    p.add_argument("normal_dir", type=Path, help="folder of good images of the part (one size)")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    p.add_argument("--defects", type=Path, default=None, help="MVTec AD layout: train/good, test/<type>, "
                   "ground_truth/<type>/*_mask.png")
    p.add_argument("--minutes", type=float, default=20.0, help="training time (resumes included; export and "
                   "evaluation come on top)")
    p.add_argument("--schedule-minutes", type=float, default=None,
                   help="length of the learning-rate schedule (warm-up, then cosine to 5%% of --lr), in --clock "
                        "minutes; default --minutes. Kept in the checkpoint: resuming continues it, so a run can be "
                        "stopped and evaluated part-way through one schedule")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="what --minutes counts: wall-clock time, or this process's CPU time (all threads; for a "
                        "budget that does not depend on what else runs on the machine)")
    p.add_argument("--from", dest="start", type=Path, default=None,
                   help="bundle (fp32/fp16) or Hugging Face checkpoint folder to start from (default: embedded)")
    p.add_argument("--keep-old-surfaces", type=float, default=0.25, metavar="FRACTION",
                   help="share of each batch drawn from the reference model's synthetic surfaces, so it keeps "
                        "them (default 0.25; 0: train on the part only)")
    p.add_argument("--held-out", type=float, default=0.2, help="share of the images kept for evaluation")
    p.add_argument("--augment", action="store_true", help="flips, quarter turns, small turns and shifts and "
                   "lighting changes of the training images (textures and parts without an orientation)")
    p.add_argument("--generators", nargs="+", default=GENERATOR_NAMES, choices=GENERATOR_NAMES,
                   help="drawn defects (training/anomalies.py; default all)")
    p.add_argument("--refine-steps", type=int, default=200, help="fine-tuning steps of the starting bundle's mask "
                   "refinement graph on the part, when it has one (0: carry the old graph over unchanged)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt-minutes", type=float, default=2.0)
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp16", help="bundle precision")
    p.add_argument("--restart", action="store_true", help="discard the work folder of an earlier run")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--allow-worse", action="store_true",
                   help="write the bundle even when it is not better than the starting model on held-out frames")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


# ------------------------------------------------------------------ evaluation on held-out items

def predict_items(runner, items: list[Labeled], background: int = 0) -> list[dict]:
    """A runner's (training.evaluate's EdgeRunner / TorchRunner) score, verdict and grid IoU (any defect label
    against the truth's cells; anomalous items) on each Labeled item."""
    from .evaluate import iou_f1

    rows = []
    for item in items:
        p = runner.run(item.image)
        row = {"score": p.score, "verdict": p.is_anomalous, "anomalous": item.anomalous, "defect": item.defect,
               "grid": p.grid}
        if item.anomalous:
            g = p.grid.shape[0]
            cells = S.defect_grid({"output": {"mask": {"grid": g, "coverage": 0.02, "background": 0}}}, item.mask, 1)
            row["grid_iou"] = iou_f1(p.grid != background, cells != 0)[0]
        rows.append(row)
    return rows


def item_metrics(rows: list[dict]) -> dict:
    """AUROC (from the score), verdict accuracy, mean grid IoU and good items flagged of predict_items' rows."""
    from .evaluate import auroc

    truth = [r["anomalous"] for r in rows]
    ious = [r["grid_iou"] for r in rows if "grid_iou" in r]
    return {"n": len(rows), "n_anomalous": int(sum(truth)), "auroc": auroc([r["score"] for r in rows], truth),
            "verdict_acc": float(np.mean([r["verdict"] == r["anomalous"] for r in rows])),
            "grid_iou": float(np.mean(ious)) if ious else float("nan"),
            "good_flagged": int(sum(r["verdict"] and not r["anomalous"] for r in rows))}


def pixel_ious(bundle_dir: Path, items: list[Labeled], grids: list[np.ndarray], threads: int = 1) -> dict:
    """Mean pixel IoU against the anomalous items' masks of the coarse mask of each grid (a model's prediction for
    that item) and, when the bundle has a refine graph, of the refined mask (what the Inspector reports)."""
    from omniad_edge import tam
    from omniad_edge.bundle import load_bundle
    from omniad_edge.refine import Refiner

    from .refine import pixel_iou

    bundle = load_bundle(bundle_dir)
    refiner = Refiner(bundle, threads) if bundle.refine is not None else None
    coarse_ious, refined_ious = [], []
    for item, g in zip(items, grids):
        if not item.anomalous:
            continue
        g = np.asarray(g, np.uint8)
        coarse = tam.grid_to_mask(g, item.mask.shape)
        coarse_ious.append(pixel_iou(coarse, item.mask))
        if refiner is not None:
            refined_ious.append(pixel_iou(refiner.refine(item.image, g, coarse)[0], item.mask))
    mean = lambda v: round(float(np.mean(v)), 4) if v else None  # noqa: E731
    return {"n": len(coarse_ious), "grid": mean(coarse_ious), "refined": mean(refined_ious)}


def evaluate_items(runner, items: list[Labeled]) -> dict:
    return item_metrics(predict_items(runner, items))


def _fmt(v) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"


def report_table(rows: dict[str, dict]) -> str:
    lines = ["| model | frames (anomalous) | AUROC | verdict accuracy | grid IoU |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, m in rows.items():
        lines.append(f"| {name} | {m['n']} ({m['n_anomalous']}) | {_fmt(m['auroc'])} | {_fmt(m['verdict_acc'])} | "
                     f"{_fmt(m['grid_iou'])} |")
    return "\n".join(lines)


def _better(new: dict, old: dict) -> bool:
    """The adapted model ships when its mean of AUROC and verdict accuracy beats the starting model's."""
    def merit(m):
        a = m["auroc"] if not np.isnan(m["auroc"]) else 0.5
        return (a + m["verdict_acc"]) / 2
    return merit(new) > merit(old)


# ------------------------------------------------------------------ the starting model

def _embedded() -> Path:
    import omniad_edge

    return Path(omniad_edge.__file__).resolve().parent / "models" / "default"


def _load_start(start: Path, threads: int):
    """(model, tokenizer.json path, base spec, runner factory for the starting model)."""
    from .evaluate import EdgeRunner, TorchRunner

    if (start / "manifest.json").is_file():
        from .bundle_weights import bundle_spec, model_from_bundle

        model, _ = model_from_bundle(start)
        manifest = json.loads((start / "manifest.json").read_text(encoding="utf-8"))
        return model, start / manifest["tokenizer"]["path"], bundle_spec(start), lambda: EdgeRunner(start, threads)
    if (start / "config.json").is_file() and (start / "output_spec.json").is_file():
        import torch
        from transformers import Qwen2_5_VLForConditionalGeneration

        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(start, dtype=torch.float32)
        spec = json.loads((start / "output_spec.json").read_text(encoding="utf-8"))
        return model, start / "tokenizer.json", spec, lambda: TorchRunner(start, threads)
    raise BundleError(f"{start}: neither a bundle (manifest.json) nor a checkpoint folder written by training "
                      "(config.json, output_spec.json)")


# ------------------------------------------------------------------ run

def _fingerprint(args, data_files: list[str]) -> str:
    keys = {k: str(getattr(args, k)) for k in ("normal_dir", "defects", "start", "keep_old_surfaces", "held_out",
                                               "augment", "generators", "batch", "lr", "seed", "clock")}
    keys["generators"] = str(sorted(args.generators))
    h = hashlib.sha256(json.dumps(keys, sort_keys=True).encode())
    for f in data_files:  # by content: rewriting the same images does not orphan a run
        h.update(f.encode() + b"\0" + hashlib.sha256(Path(f).read_bytes()).digest())
    return h.hexdigest()[:16]


class _Progress:
    """A progress bar over the time budget (tqdm on stderr), with step and loss."""

    def __init__(self, total_s: float, done_s: float, quiet: bool):
        self.bar = None
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=round(total_s), initial=round(min(done_s, total_s)), unit="s", file=sys.stderr,
                            desc="adapt", bar_format="{desc} {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s "
                            "[{elapsed}<{remaining}]{postfix}")

    def update(self, spent: float, **postfix) -> None:
        if self.bar is not None:
            self.bar.n = round(min(spent, self.bar.total))
            self.bar.set_postfix(postfix, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(args) -> dict:
    t_wall, t_cpu = time.monotonic(), time.process_time()
    out = args.out.resolve()
    if out.exists() and not args.overwrite:
        raise AdaptError(f"{out} exists; give --overwrite to replace it (it stays as it is until the new bundle "
                         "is complete)")
    if not 0.0 <= args.keep_old_surfaces < 1.0:
        raise AdaptError(f"--keep-old-surfaces must be in [0, 1), got {args.keep_old_surfaces}")
    if args.minutes <= 0:
        raise AdaptError(f"--minutes must be positive, got {args.minutes}")
    if args.schedule_minutes is not None and args.schedule_minutes <= 0:
        raise AdaptError(f"--schedule-minutes must be positive, got {args.schedule_minutes}")
    if args.refine_steps < 0:
        raise AdaptError(f"--refine-steps must be 0 or more, got {args.refine_steps}")
    data = load_part(args.normal_dir, args.defects, args.held_out, args.seed)
    files = sorted({item.source for item in data.train_good + data.held_good + data.train_defects
                    + data.held_defects})
    work = out.with_name(out.name + ".adapt")
    fingerprint = _fingerprint(args, files)
    state_path = work / "state.pt"
    if args.restart:
        shutil.rmtree(work, ignore_errors=True)
    if state_path.is_file():
        meta = json.loads((work / "run.json").read_text(encoding="utf-8"))
        if meta["fingerprint"] != fingerprint:
            raise AdaptError(f"{work} holds a run on other inputs or settings; give --restart to discard it, or "
                             "the same arguments and files to resume it")
    work.mkdir(parents=True, exist_ok=True)
    (work / "run.json").write_text(json.dumps({"fingerprint": fingerprint, "args": {k: str(v) for k, v in
                                                vars(args).items()}}, indent=1), encoding="utf-8")

    import torch

    from .data import Encoder, collate, training_frame
    from .evaluate import EdgeRunner
    from .train import Objective, lr_at, save_hf

    torch.set_num_threads(args.threads)
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    start = (args.start or _embedded()).resolve()
    model, tok_path, base_spec, start_runner = _load_start(start, args.threads)
    spec = part_spec(base_spec, data.labels)
    encoder = Encoder(tok_path, spec)
    builder = SampleBuilder(data, kinds=tuple(args.generators), augment=args.augment)
    held = builder.held_out(args.seed + 1)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    say(f"adapt: {len(data.train_good)} good + {len(data.train_defects)} defect images to train on, "
        f"{len(held)} held-out frames; starting from {start}")

    objective = Objective(model, encoder, spec)
    opt = torch.optim.AdamW(objective.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    step, elapsed, curve, resumed_at = 0, 0.0, [], None
    schedule = {"kind": "warmup-cosine", "peak_lr": args.lr, "warmup_steps": WARMUP_STEPS, "floor": 0.05,
                "minutes": args.schedule_minutes or args.minutes}
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        objective.aux.load_state_dict(state["aux"])
        opt.load_state_dict(state["optimizer"])
        step, elapsed = int(state["step"]), float(state["elapsed_s"])
        resumed_at = step
        curve = json.loads((work / "curve.json").read_text(encoding="utf-8"))
        if "schedule" in state:  # a checkpoint of an older adapt has none: its schedule followed --minutes
            schedule = json.loads(state["schedule"])
        if args.schedule_minutes is not None and args.schedule_minutes != schedule["minutes"]:
            raise AdaptError(f"{work} holds a run on a {schedule['minutes']}-minute schedule, not "
                             f"--schedule-minutes {args.schedule_minutes}; leave it out to resume, or --restart")
        say(f"adapt: resuming at step {step} ({elapsed / 60:.1f} of {args.minutes} minutes spent, schedule "
            f"{schedule['minutes']} minutes)")
    baseline_path = work / "baseline.json"
    if not baseline_path.is_file():
        say("adapt: evaluating the starting model on the held-out frames")
        baseline_path.write_text(json.dumps(evaluate_items(start_runner(), held)), encoding="utf-8")
    baseline = json.loads(baseline_path.read_text(encoding="utf-8"))

    budget = args.minutes * 60.0
    n_old = int(round(args.batch * args.keep_old_surfaces))
    pad, image_pad = encoder.tokens["pad"], encoder.tokens["image_pad"]
    clock = time.process_time if args.clock == "cpu" else time.monotonic
    t0, last_ckpt, losses = clock(), time.monotonic(), []

    def spent() -> float:
        return elapsed + clock() - t0

    def checkpoint() -> None:
        tmp = state_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "aux": objective.aux.state_dict(), "optimizer": opt.state_dict(),
                    "step": step, "elapsed_s": spent(), "schedule": json.dumps(schedule)}, tmp)
        (work / "curve.json").write_text(json.dumps(curve), encoding="utf-8")
        os.replace(tmp, state_path)

    bar = _Progress(budget, elapsed, args.quiet)
    model.train()
    try:
        while spent() < budget:
            rng = np.random.default_rng([args.seed, step, 3])
            examples = []
            for _ in range(args.batch - n_old):
                item = builder.draw(rng)
                examples.append(encoder.encode(item.image, grid(spec, item), item.mask, _label(spec, item)))
            for _ in range(n_old):
                sample, image = training_frame("train", int(rng.integers(1_000_000)))
                examples.append(encoder.sample(sample, image))
            batch = collate(examples, pad, image_pad)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, spent() / (schedule["minutes"] * 60.0), schedule["peak_lr"],
                                schedule["warmup_steps"])
            loss, lm_loss, aux_loss = objective(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(objective.parameters(), 1.0)
            opt.step()
            step += 1
            losses.append(lm_loss.item())
            if step % 10 == 0:
                curve.append({"step": step, "minutes": round(spent() / 60, 3), "loss": round(float(np.mean(losses)),
                                                                                              4)})
                losses = []
            bar.update(spent(), step=step, loss=f"{losses[-1] if losses else curve[-1]['loss']:.3f}")
            if time.monotonic() - last_ckpt > args.ckpt_minutes * 60:
                checkpoint()
                last_ckpt = time.monotonic()
    except KeyboardInterrupt:
        bar.close()
        checkpoint()
        raise AdaptError(f"interrupted at step {step} ({spent() / 60:.1f} of {args.minutes} minutes); nothing was "
                         f"written to {out}. The same command resumes from {work}; --restart starts over") from None
    bar.close()
    checkpoint()
    trained = spent()
    if step < MIN_STEPS:
        raise AdaptError(f"{step} training steps in {trained / 60:.2f} minutes is too little to learn anything (at "
                         f"least {MIN_STEPS}); nothing was written to {out}. Give more --minutes: the run resumes "
                         "where it stopped")

    model.eval()
    hf = work / "hf"
    save_hf(model, hf, Path(tok_path), spec)
    (work / "output_spec.json").write_text(json.dumps(spec, indent=1), encoding="utf-8")
    tmp_bundle = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp_bundle, ignore_errors=True)
    try:
        from export.pipeline import ExportOptions, export_bundle

        say("adapt: exporting the bundle")
        export_bundle(hf, tmp_bundle, ExportOptions(
            precision=args.precision, max_image_tokens=int(S.PREPROCESS["max_image_tokens"]),
            output_spec=str(work / "output_spec.json"), name=f"{spec['name']}-adapted-{args.normal_dir.name}",
            quiet=True))
        say("adapt: evaluating the adapted bundle on the held-out frames")
        predicted = predict_items(EdgeRunner(tmp_bundle, args.threads), held)
        adapted = item_metrics(predicted)
        refine = _adapt_refine(args, start, tmp_bundle, data, spec, held, [r["grid"] for r in predicted], work, say)
        report = {"baseline": baseline, "adapted": adapted, "refine": refine, "steps": step,
                  "resumed_at_step": resumed_at, "train_minutes": round(trained / 60, 2), "schedule": schedule,
                  "clock": args.clock,
                  "cpu_minutes_this_call": round((time.process_time() - t_cpu) / 60, 2),
                  "wall_minutes_this_call": round((time.monotonic() - t_wall) / 60, 2),
                  "load_average": os.getloadavg(), "curve": curve, "labels": spec["output"]["mask"]["labels"]}
        rows = {f"starting model ({start.name})": baseline, f"adapted ({step} steps, "
                f"{report['train_minutes']:.1f} min)": adapted}
        report["table"] = report_table(rows)
        print(report["table"])
        if refine is not None:
            print(f"pixel IoU of the held-out defects ({refine['n']}): grid {_fmt(refine['grid'])}, old refine graph "
                  f"{_fmt(refine['old'])}, fine-tuned {_fmt(refine['fine_tuned'])} ({refine['steps']} steps); kept: "
                  f"{refine['kept']}")
        better = _better(adapted, baseline)
        report["shipped"] = better or args.allow_worse
        (work / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
        if not report["shipped"]:
            raise AdaptError(f"the adapted model is not better than the starting model on the {len(held)} held-out "
                             f"frames after {step} steps ({report['train_minutes']:.1f} minutes): too little "
                             f"training to learn this part; nothing was written to {out}. Give more --minutes (the "
                             "run continues from where it stopped), or --allow-worse to write it anyway")
        _replace(tmp_bundle, out)
    finally:
        shutil.rmtree(tmp_bundle, ignore_errors=True)
    print(f"adapt: wrote {out} ({step} steps, {report['train_minutes']:.1f} training minutes; report "
          f"{work / 'report.json'})")
    return report


def _adapt_refine(args, start: Path, bundle_dir: Path, data, spec: dict, held: list[Labeled], grids, work: Path,
                  say) -> dict | None:
    """The starting bundle's refine graph, fine-tuned on drawn defects of the part, into bundle_dir when it beats the
    grid alone and the old graph on the held-out defects (pixel IoU from the adapted model's grids); else the old
    graph. None when the start has no refine graph."""
    from omniad_edge.bundle import load_bundle

    if not (start / "manifest.json").is_file() or load_bundle(start).refine is None:
        return None
    import torch

    from export.refine import add_refine

    from . import refine as RT

    src = load_bundle(start)
    old_graph, size, dilate = src.path(src.refine["path"]), int(src.refine["size"]), int(src.refine["dilate"])
    add_refine(bundle_dir, old_graph, size=size, dilate=dilate)
    old = pixel_ious(bundle_dir, held, grids, args.threads)
    result = {"n": old["n"], "grid": old["grid"], "old": old["refined"], "fine_tuned": None,
              "steps": args.refine_steps, "kept": "old"}
    if args.refine_steps == 0 or not old["n"]:
        return result
    say(f"adapt: fine-tuning the refine graph ({args.refine_steps} steps)")
    torch.manual_seed(args.seed)
    model = RT.model_from_onnx(old_graph)
    rng = np.random.default_rng([args.seed, 29])
    drawn = SampleBuilder(data, kinds=tuple(args.generators), p_defect=1.0, augment=args.augment)
    examples = [(it.image, it.mask, grid(spec, it)) for it in (drawn.draw(rng) for _ in range(128))]
    examples = [e for e in examples if e[1].any() and e[2].any()]
    RT.fit(model, examples, lambda k: k / args.refine_steps if k < args.refine_steps else None, 1e-3, 16, rng)
    tuned = RT.export_onnx(model, work / "refine.onnx")
    add_refine(bundle_dir, tuned, size=size, dilate=dilate)
    result["fine_tuned"] = pixel_ious(bundle_dir, held, grids, args.threads)["refined"]
    if result["fine_tuned"] > max(result["grid"], result["old"] or 0.0):
        result["kept"] = "fine-tuned"
    else:
        add_refine(bundle_dir, old_graph, size=size, dilate=dilate)
    return result


def _label(spec: dict, item: Labeled) -> int:
    if not item.anomalous:
        return 0
    return [n.lower() for n in spec["output"]["mask"]["labels"]].index(item.defect.lower())


def _replace(new: Path, out: Path) -> None:
    """Put the complete bundle `new` at `out`: the old one (if any) is moved aside first and removed last."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(new, out)
    shutil.rmtree(old, ignore_errors=True)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
