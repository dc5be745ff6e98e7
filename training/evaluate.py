"""Evaluate the reference model on the held-out synthetic test split, through the edge runtime and/or PyTorch.

    python -m training.evaluate --bundle omniad_edge/models/default --hf runs/ref/hf --n 400 --out runs/eval

Metrics: image AUROC from the model's continuous probability (1 - probability of the empty mask text; the edge
runtime's `Inspection.anomaly_probability`, which the PyTorch path computes the same way), verdict accuracy, mask
IoU and F1 on anomalous frames (on the 16x16 grid, and at pixel level after upsampling the grid to the frame, with
the ceiling that the ground-truth grid itself reaches), the IoU of the occupied grid rows and columns, defect-type
accuracy, generated tokens per frame; per defect type and per surface. With two paths (edge and PyTorch, or a bundle and a `--baseline`
bundle) it also reports on how many frames they write different text or verdicts and the largest score difference.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from omniad_edge.contract import output_blocks
from omniad_edge.frame import to_rgb

from . import spec as S
from .splits import generate


# ------------------------------------------------------------------ metrics

def auroc(scores, labels) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); nan if one class is missing."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels, bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def iou_f1(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    inter = float((pred & true).sum())
    union = float((pred | true).sum())
    total = float(pred.sum() + true.sum())
    if union == 0:
        return 1.0, 1.0
    return inter / union, 2 * inter / total


def axis_iou(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """IoU of the occupied rows and of the occupied columns of two masks: says along which axis a mask is misplaced
    (a decoder that cannot tell image columns apart gets the rows and misses the columns)."""
    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    return iou_f1(pred.any(1), true.any(1))[0], iou_f1(pred.any(0), true.any(0))[0]


def majority_label(grid: np.ndarray, background: int = 0) -> int | None:
    fg = grid[grid != background]
    if fg.size == 0:
        return None
    values, counts = np.unique(fg, return_counts=True)
    return int(values[np.argmax(counts)])


# ------------------------------------------------------------------ runners: frame -> prediction dict

@dataclass
class Prediction:
    text: str
    score: float
    is_anomalous: bool
    grid: np.ndarray  # (G, G) uint8 labels
    defect_type: str | None
    tokens: int
    ms: float
    extra: dict = field(default_factory=dict)


class TorchRunner:
    """The PyTorch model (Hugging Face folder written by training.train), greedy decoding."""

    name = "torch"

    def __init__(self, hf_dir: str | Path, threads: int = 2, max_new_tokens: int = 320):
        import torch
        from transformers import Qwen2_5_VLForConditionalGeneration

        from .data import Encoder

        torch.set_num_threads(threads)
        hf_dir = Path(hf_dir)
        self.torch = torch
        self.spec = json.loads((hf_dir / "output_spec.json").read_text(encoding="utf-8"))
        self.encoder = Encoder(hf_dir / "tokenizer.json", self.spec)
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).eval()
        self.codec = S.codec(self.spec)
        self.max_new_tokens = max_new_tokens
        out = self.spec["output"]
        tok = self.encoder.tokenizer
        g = out["mask"]["grid"]
        empty = self.codec.encode(np.full((g, g), out["mask"]["background"], np.uint8))
        # E: the empty-mask tokens; score = 1 - P(E) along the greedy output, the runtime's rule (generate.py)
        self.empty_ids = tok.encode(out["tags"]["mask"][0] + empty)

    def _inputs(self, ids: np.ndarray, pre):
        t = self.torch
        input_ids = t.from_numpy(np.asarray(ids, np.int64))[None]
        return {"input_ids": input_ids, "attention_mask": t.ones_like(input_ids),
                "mm_token_type_ids": (input_ids == self.encoder.tokens["image_pad"]).long(),
                "pixel_values": t.from_numpy(pre.pixel_values), "image_grid_thw": t.tensor([pre.grid_thw])}

    def run(self, rgb: np.ndarray) -> Prediction:
        t0 = time.perf_counter()
        pre, prompt = self.encoder.prompt(rgb)
        eos = self.encoder.tokens["eos"]
        with self.torch.no_grad():
            out = self.model.generate(**self._inputs(prompt.ids, pre), max_new_tokens=self.max_new_tokens,
                                      do_sample=False, eos_token_id=eos, pad_token_id=self.encoder.tokens["pad"],
                                      output_scores=True, return_dict_in_generate=True)
        gen = [int(i) for i in out.sequences[0, len(prompt):]]
        lp = 0.0
        for step, target in enumerate(self.empty_ids[: len(gen)]):
            lp += float(self.torch.log_softmax(out.scores[step][0].float(), -1)[target])
            if gen[step] != target:
                break
        ms = (time.perf_counter() - t0) * 1000
        if gen and gen[-1] in eos:
            gen = gen[:-1]
        n_tokens = len(gen)  # without the end token, as the Inspection counts them
        text = self.encoder.tokenizer.decode(gen)
        return _from_text(self.spec, self.codec, text, 1.0 - float(np.exp(lp)), n_tokens, ms)


def _from_text(spec: dict, codec, text: str, score: float, tokens: int, ms: float) -> Prediction:
    out = spec["output"]
    labels = out["mask"]["labels"]
    blocks = output_blocks(text, out["tags"])
    mask_text = blocks.get("mask")
    g = out["mask"]["grid"]
    if mask_text is None:
        grid = np.full((g, g), out["mask"]["background"], np.uint8)
    else:
        grid = np.asarray(codec.decode(mask_text).grid, np.uint8).reshape(g, g)
    answer = blocks.get("answer")
    if answer is not None and answer.strip() in out["answers"].values():
        verdict = answer.strip() == out["answers"]["anomalous"]
    else:
        verdict = bool((grid != out["mask"]["background"]).any())
    label = majority_label(grid, out["mask"]["background"])
    return Prediction(text, score, verdict, grid, labels[label] if label is not None else None, tokens, ms)


class EdgeRunner:
    """The edge runtime: omniad_edge.Inspector on an exported bundle."""

    name = "edge"

    def __init__(self, bundle: str | Path, threads: int = 2, name: str = "edge"):
        from omniad_edge import Inspector

        self.name = name  # two bundles in one evaluation need two names (--baseline)
        self.inspector = Inspector(str(bundle), mode="explain", threads=threads)

    def run(self, rgb: np.ndarray) -> Prediction:
        t0 = time.perf_counter()
        r = self.inspector.run(rgb)
        ms = (time.perf_counter() - t0) * 1000
        grid = np.asarray(r.grid, np.uint8)
        return Prediction(r.text, float(r.anomaly_probability), bool(r.is_anomalous), grid, r.defect_type,
                          int(r.generated_tokens), ms)


# ------------------------------------------------------------------ evaluation

def frames(n: int, start: int = 0, size=224, modes=("rgb",)):
    """Test frames; with several modes, frame i is stored in modes[i % len(modes)] and converted back by
    omniad_edge.frame (grey, RGBA, 16-bit), as a device would receive it."""
    for i, sample in enumerate(generate("test", n, start=start, size=size)):
        yield sample, to_rgb(_as_mode(sample.image, modes[i % len(modes)]))


def _as_mode(rgb: np.ndarray, mode: str):
    from PIL import Image

    if mode == "rgb":
        return rgb
    if mode == "grey":
        return np.asarray(Image.fromarray(rgb).convert("L"))
    if mode == "rgba":
        return np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    if mode == "uint16":
        return rgb.astype(np.uint16) * 257
    raise ValueError(f"mode must be one of rgb, grey, rgba, uint16; got {mode!r}")


def evaluate(runners: list, n: int, start: int = 0, size=224, modes=("rgb",), spec: dict | None = None,
             progress: bool = True) -> dict:
    from omniad_edge import tam

    spec = spec or S.load_spec()
    labels = spec["output"]["mask"]["labels"]
    bg = spec["output"]["mask"]["background"]
    rows = []
    for k, (sample, rgb) in enumerate(frames(n, start, size, modes)):
        true_grid = S.sample_grid(spec, sample)
        row = {"seed": sample.seed, "surface": sample.surface, "defect": sample.defect or "none",
               "anomalous": sample.anomalous}
        if sample.anomalous:
            ceiling = tam.grid_to_mask(true_grid, sample.mask.shape) != 0
            row["pixel_iou_ceiling"] = iou_f1(ceiling, sample.mask)[0]
        for runner in runners:
            p = runner.run(rgb)
            r = {"score": p.score, "verdict": p.is_anomalous, "text": p.text, "tokens": p.tokens, "ms": p.ms}
            if sample.anomalous:
                r["grid_iou"], r["grid_f1"] = iou_f1(p.grid != bg, true_grid != bg)
                r["row_iou"], r["col_iou"] = axis_iou(p.grid != bg, true_grid != bg)
                pix = tam.grid_to_mask(p.grid, sample.mask.shape) != 0
                r["pixel_iou"], r["pixel_f1"] = iou_f1(pix, sample.mask)
                r["type_ok"] = p.defect_type == sample.defect
            row[runner.name] = r
        rows.append(row)
        if progress and (k + 1) % 50 == 0:
            print(f"  {k + 1}/{n} frames", flush=True)
    return {"rows": rows, "summary": summarise(rows, [r.name for r in runners])}


def _metrics(rows: list[dict], name: str) -> dict:
    if not rows:
        return {}
    preds = [r[name] for r in rows]
    anomalous = [r["anomalous"] for r in rows]
    bad = [p for p, a in zip(preds, anomalous) if a]
    m = {"n": len(rows), "n_anomalous": len(bad),
         "auroc": auroc([p["score"] for p in preds], anomalous),
         "verdict_acc": float(np.mean([p["verdict"] == a for p, a in zip(preds, anomalous)])),
         "tokens_per_frame": float(np.mean([p["tokens"] for p in preds])),
         "ms_per_frame": float(np.median([p["ms"] for p in preds]))}
    if bad:
        for key in ("grid_iou", "grid_f1", "row_iou", "col_iou", "pixel_iou", "pixel_f1"):
            m[key] = float(np.mean([p[key] for p in bad]))
        m["type_acc"] = float(np.mean([p["type_ok"] for p in bad]))
        m["pixel_iou_ceiling"] = float(np.mean([r["pixel_iou_ceiling"] for r in rows if r["anomalous"]]))
    return m


def summarise(rows: list[dict], names: list[str]) -> dict:
    out = {}
    for name in names:
        out[name] = {"all": _metrics(rows, name)}
        for key in ("defect", "surface"):
            for value in sorted({r[key] for r in rows}):
                out[name][f"{key}={value}"] = _metrics([r for r in rows if r[key] == value], name)
    if len(names) == 2:
        a, b = names
        texts = sum(r[a]["text"] != r[b]["text"] for r in rows)
        verdicts = sum(r[a]["verdict"] != r[b]["verdict"] for r in rows)
        out["agreement"] = {
            "paths": [a, b], "frames": len(rows),
            "same_text": 1 - texts / len(rows), "text_differs": texts,
            "same_verdict": 1 - verdicts / len(rows), "verdict_differs": verdicts,
            "max_score_diff": float(max(abs(r[a]["score"] - r[b]["score"]) for r in rows)),
        }
    return out


def table(summary: dict, name: str) -> str:
    """Markdown table of one path's metrics: overall, then per defect type and per surface."""
    cols = ["n", "auroc", "verdict_acc", "grid_iou", "row_iou", "col_iou", "pixel_iou", "pixel_iou_ceiling",
            "type_acc", "tokens_per_frame"]
    head = "| subset | " + " | ".join(cols) + " |\n|" + "---|" * (len(cols) + 1) + "\n"
    lines = []
    for subset, m in summary[name].items():
        cells = []
        for c in cols:
            v = m.get(c)
            cells.append("-" if v is None or (isinstance(v, float) and np.isnan(v)) else
                         (str(v) if isinstance(v, int) else f"{v:.3f}"))
        lines.append(f"| {subset} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Evaluate the reference model on the synthetic test split")
    ap.add_argument("--bundle", type=Path, help="exported bundle for the edge runtime")
    ap.add_argument("--hf", type=Path, help="Hugging Face checkpoint folder for the PyTorch path")
    ap.add_argument("--baseline", type=Path, help="a second bundle run on the same frames (path name 'baseline'), "
                    "to compare a re-export with the bundle it replaces")
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--size", type=int, nargs="+", default=[224], help="frame side, or height width")
    ap.add_argument("--modes", nargs="+", default=["rgb"], help="rgb grey rgba uint16, cycled over frames")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, help="directory for summary.json, rows.jsonl and table.md")
    args = ap.parse_args(argv)
    if not args.bundle and not args.hf:
        ap.error("give --bundle, --hf or both")
    runners = []
    if args.bundle:
        runners.append(EdgeRunner(args.bundle, args.threads))
    if args.baseline:
        runners.append(EdgeRunner(args.baseline, args.threads, name="baseline"))
    if args.hf:
        runners.append(TorchRunner(args.hf, args.threads))
    size = args.size[0] if len(args.size) == 1 else tuple(args.size[:2])
    result = evaluate(runners, args.n, args.start, size, tuple(args.modes))
    tables = "\n\n".join(f"### {r.name}\n\n" + table(result["summary"], r.name) for r in runners)
    print(tables)
    if "agreement" in result["summary"]:
        print("\nagreement:", json.dumps(result["summary"]["agreement"]))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "summary.json").write_text(json.dumps(result["summary"], indent=1), encoding="utf-8")
        with open(args.out / "rows.jsonl", "w", encoding="utf-8") as f:
            for row in result["rows"]:
                f.write(json.dumps(row) + "\n")
        (args.out / "table.md").write_text(tables + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
