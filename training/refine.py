"""The mask refinement network (omniad_edge/refine.py runs it): training on synthetic defects, ONNX export.

    nice -n 10 python -m training.refine --out runs/refine --minutes 8 \
        --bundle omniad_edge/models/default          # trains, exports runs/refine/refine.onnx, adds it to the bundle

A small U-Net (3 levels, 8/16/32 channels, ~25 k parameters) takes the frame and the coarse mask (the label grid
upsampled, `omniad_edge.refine.refine_input`, so training feeds what the runtime feeds) and predicts pixel logits.
Examples: anomalous frames of the train split with their ground-truth grid, perturbed the way a model's grid is
wrong (cells dropped, neighbours added, the whole mask shifted by a cell), so the network learns to find the defect
near the hint rather than to copy it. The loss (BCE + soft Dice) counts only the pixels the runtime lets through:
the hint dilated by `dilate` cells. Training runs on 112 px crops around the defect (the network is fully
convolutional), with a quarter of the frames at other sizes (160-320 px, resized like the runtime does).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from omniad_edge import refine as R
from omniad_edge import tam
from omniad_edge.contract import REFINE_INPUT, REFINE_OUTPUT

from . import spec as S
from .splits import generate

SIZE = 224  # the graph's working size (graphs.refine.size)
DILATE = 1  # grid cells the refined mask may reach beyond the coarse one (graphs.refine.dilate)
CROP = 112


def build_model(width: int = 8):
    import torch
    from torch import nn
    from torch.nn import functional as F

    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                             nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True))

    class RefineNet(nn.Module):
        def __init__(self):
            super().__init__()
            c1, c2, c3 = width, 2 * width, 4 * width
            self.enc1, self.enc2, self.enc3 = block(4, c1), block(c1, c2), block(c2, c3)
            self.dec2, self.dec1 = block(c3 + c2, c2), block(c2 + c1, c1)
            self.head = nn.Conv2d(c1, 1, 1)

        def forward(self, x):
            e1 = self.enc1(x)
            e2 = self.enc2(F.max_pool2d(e1, 2))
            e3 = self.enc3(F.max_pool2d(e2, 2))
            d2 = self.dec2(torch.cat([F.interpolate(e3, scale_factor=2.0, mode="nearest"), e2], 1))
            d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0, mode="nearest"), e1], 1))
            return self.head(d1)

    return RefineNet()


def perturb(grid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The ground-truth grid made wrong the way a model's grid is: shifted, cells dropped, neighbours added."""
    g = grid.copy()
    label = int(g[g != 0][0])
    if rng.random() < 0.3:
        dy, dx = (int(v) for v in rng.integers(-1, 2, size=2))
        shifted = np.roll(g, (dy, dx), axis=(0, 1))
        shifted[0 if dy > 0 else -1] *= dy == 0  # no wrap-around at the edges
        shifted[:, 0 if dx > 0 else -1] *= dx == 0
        g = shifted if shifted.any() else g
    keep = ~((g != 0) & (rng.random(g.shape) < 0.15))
    if (g * keep).any():
        g = g * keep
    ring = R.dilate_grid(g, 1) & (g == 0)
    g[ring & (rng.random(g.shape) < 0.15)] = label
    return g.astype(np.uint8)


def examples(n: int, start: int, spec: dict, seed: int):
    """n anomalous frames of the train split: (rgb, ground-truth pixel mask, ground-truth grid)."""
    rng = np.random.default_rng(seed)
    out = []
    for i, sample in enumerate(generate("train", n, start=start, anomalous=True)):
        if rng.random() < 0.25:
            side = int(rng.integers(160, 321))
            sample = next(generate("train", 1, start=start + i, anomalous=True, size=side))
        out.append((sample.image, sample.mask, S.sample_grid(spec, sample)))
    return out


def _target(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if mask.shape == hw:
        return mask.astype(np.float32)
    return np.asarray(Image.fromarray(mask).resize((hw[1], hw[0]), Image.NEAREST), np.float32)


def batch(data, rng: np.random.Generator, size: int = SIZE, crop: int = CROP, dilate: int = DILATE):
    """(inputs (B, 4, crop, crop), targets (B, 1, crop, crop), gates (B, 1, crop, crop)) float32."""
    xs, ys, gs = [], [], []
    for rgb, mask, grid in data:
        hint = perturb(grid, rng)
        x = R.refine_input(rgb, hint, size)[0]
        hw = x.shape[1:]
        y = _target(mask, hw)
        gate = tam.grid_to_mask(R.dilate_grid(hint, dilate).astype(np.uint8), hw).astype(np.float32)
        # a crop around the defect (somewhere inside it, jittered), inside the frame
        ys_, xs_ = np.nonzero(y) if y.any() else np.nonzero(gate)
        k = rng.integers(len(ys_))
        cy = int(np.clip(ys_[k] + rng.integers(-crop // 4, crop // 4 + 1) - crop // 2, 0, max(0, hw[0] - crop)))
        cx = int(np.clip(xs_[k] + rng.integers(-crop // 4, crop // 4 + 1) - crop // 2, 0, max(0, hw[1] - crop)))
        c = min(crop, hw[0], hw[1])
        window = (slice(cy, cy + c), slice(cx, cx + c))
        xs.append(_pad(x[:, window[0], window[1]], crop))
        ys.append(_pad(y[None][:, window[0], window[1]], crop))
        gs.append(_pad(gate[None][:, window[0], window[1]], crop))
    return np.stack(xs), np.stack(ys), np.stack(gs)


def _pad(a: np.ndarray, crop: int) -> np.ndarray:
    return np.pad(a, ((0, 0), (0, crop - a.shape[1]), (0, crop - a.shape[2])))


def loss_fn(logits, target, gate):
    import torch
    from torch.nn import functional as F

    bce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * gate).sum() / gate.sum().clamp(min=1)
    p = torch.sigmoid(logits) * gate
    t = target * gate
    dice = 1 - (2 * (p * t).sum((1, 2, 3)) + 1) / (p.sum((1, 2, 3)) + t.sum((1, 2, 3)) + 1)
    return bce + dice.mean()


def pixel_iou(pred: np.ndarray, true: np.ndarray) -> float:
    union = np.logical_or(pred, true).sum()
    return float(np.logical_and(pred, true).sum() / union) if union else 1.0


def fit(model, data, progress, lr: float, batch_size: int, rng: np.random.Generator, log_loss=None) -> int:
    """AdamW steps on batches of `data` ((rgb, pixel mask, grid) triples) while progress(step) gives the schedule's
    position in [0, 1] (cosine from lr to 5%), until it returns None; log_loss(step, mean loss) every 100 steps.
    Leaves the model in eval mode; -> the number of steps."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    model.train()
    step, running = 0, []
    while (frac := progress(step)) is not None:
        for group in opt.param_groups:
            group["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * frac)))
        idx = rng.integers(len(data), size=batch_size)
        x, y, g = (torch.from_numpy(a) for a in batch([data[i] for i in idx], rng))
        loss = loss_fn(model(x), y, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        running.append(loss.item())
        step += 1
        if step % 100 == 0 and log_loss is not None:
            log_loss(step, float(np.mean(running)))
            running = []
    model.eval()
    return step


def model_from_onnx(path: Path):
    """build_model() with the weights of a refine graph export_onnx wrote (its initializers carry the torch names);
    a graph of another architecture raises BundleError."""
    import onnx
    import torch
    from onnx import numpy_helper

    from omniad_edge.errors import BundleError

    model = build_model()
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    state = model.state_dict()
    if any(k not in weights or weights[k].shape != tuple(v.shape) for k, v in state.items()):
        raise BundleError(f"{path}: not a refine graph of training/refine.py's architecture (its weights do not "
                          "match build_model())")
    model.load_state_dict({k: torch.from_numpy(weights[k].copy()) for k in state})
    return model.eval()


def train(out: Path, minutes: float, frames: int, batch_size: int, lr: float, threads: int, seed: int = 0,
          max_steps: int | None = None, init_from: Path | None = None, log=print):
    """Trains until `minutes` (or max_steps) and returns the model (eval mode); writes out/refine.pt + log."""
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    spec = S.load_spec()
    t0 = time.time()
    data = examples(frames, seed * frames, spec, seed)  # another seed draws other train frames
    log(json.dumps({"event": "data", "frames": len(data), "s": round(time.time() - t0, 1)}))
    model = build_model()
    if init_from is not None:  # a state dict this function wrote (torch tensors only, weights_only)
        model.load_state_dict(torch.load(init_from, weights_only=True))
    deadline = time.time() + 60 * minutes

    def progress(step: int) -> float | None:  # cosine decay over the time budget
        if time.time() >= deadline or (max_steps is not None and step >= max_steps):
            return None
        return min(1.0, (time.time() - t0) / (60 * minutes))

    def every_100(step: int, loss: float) -> None:
        log(json.dumps({"step": step, "loss": round(loss, 4), "min": round((time.time() - t0) / 60, 2)}))

    step = fit(model, data, progress, lr, batch_size, np.random.default_rng(seed + 1), every_100)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "refine.pt")
    log(json.dumps({"event": "trained", "steps": step, "min": round((time.time() - t0) / 60, 2)}))
    return model


def validate(model, n: int = 100, seed: int = 0) -> dict:
    """Pixel IoU on anomalous val-split frames: the coarse mask alone vs refined, from the ground-truth grid and
    from a perturbed one (a stand-in for a model's grid; the real figures come from benchmarks/bench_refine.py)."""
    import torch

    spec = S.load_spec()
    rng = np.random.default_rng(seed)
    rows = {"coarse_gt": [], "refined_gt": [], "coarse_perturbed": [], "refined_perturbed": []}
    for sample in generate("val", n, anomalous=True):
        grid = S.sample_grid(spec, sample)
        for kind, hint in (("gt", grid), ("perturbed", perturb(grid, rng))):
            coarse = tam.grid_to_mask(hint, sample.mask.shape)
            with torch.no_grad():
                logits = model(torch.from_numpy(R.refine_input(sample.image, hint, SIZE)))[0, 0].numpy()
            gate = tam.grid_to_mask(R.dilate_grid(hint, DILATE).astype(np.uint8), sample.mask.shape)
            refined = (logits > 0) & gate
            rows[f"coarse_{kind}"].append(pixel_iou(coarse, sample.mask))
            rows[f"refined_{kind}"].append(pixel_iou(refined if refined.any() else coarse, sample.mask))
    return {k: round(float(np.mean(v)), 4) for k, v in rows.items()}


def export_onnx(model, path: Path) -> Path:
    """The model as ONNX (opset 18, dynamic height and width in multiples of 4), checked against torch."""
    import onnxruntime as ort
    import torch

    k_h, k_w = torch.export.Dim("k_h", min=1, max=1024), torch.export.Dim("k_w", min=1, max=1024)
    x = torch.from_numpy(R.refine_input(np.zeros((224, 224, 3), np.uint8), np.zeros((16, 16), np.uint8), SIZE))
    torch.onnx.export(model, (x,), str(path), input_names=[REFINE_INPUT], output_names=[REFINE_OUTPUT],
                      dynamic_shapes={"x": {2: 4 * k_h, 3: 4 * k_w}}, opset_version=18, dynamo=True,
                      external_data=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for shape in ((224, 224), (160, 224), (224, 128)):
        probe = torch.from_numpy(rng.standard_normal((1, 4) + shape).astype(np.float32))
        with torch.no_grad():
            want = model(probe).numpy()
        got = session.run([REFINE_OUTPUT], {REFINE_INPUT: probe.numpy()})[0]
        if got.shape != want.shape or not np.allclose(got, want, atol=1e-4):
            raise RuntimeError(f"refine.onnx differs from torch at {shape}: max |diff| "
                               f"{np.abs(got - want).max() if got.shape == want.shape else got.shape}")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Train the mask refinement network and export it to ONNX")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--max-steps", type=int)
    ap.add_argument("--frames", type=int, default=2000, help="anomalous train-split frames to draw from")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--init-from", type=Path, help="continue from a refine.pt this script wrote")
    ap.add_argument("--seed", type=int, default=0, help="draws the examples and the perturbations")
    ap.add_argument("--val", type=int, default=100, help="val-split frames for the check after training")
    ap.add_argument("--bundle", type=Path, help="add the exported graph to this bundle (export/refine.py)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    def log(line: str) -> None:
        print(line, flush=True)
        with open(args.out / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    model = train(args.out, args.minutes, args.frames, args.batch, args.lr, args.threads, seed=args.seed,
                  max_steps=args.max_steps, init_from=args.init_from, log=log)
    if args.val:
        log(json.dumps({"event": "val", **validate(model, args.val)}))
    onnx_path = export_onnx(model, args.out / "refine.onnx")
    log(json.dumps({"event": "exported", "path": str(onnx_path), "bytes": onnx_path.stat().st_size}))
    if args.bundle:
        from export.refine import add_refine

        add_refine(args.bundle, onnx_path, size=SIZE, dilate=DILATE)
        log(json.dumps({"event": "bundled", "bundle": str(args.bundle)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
