"""Tokens per mask for each Text-as-Mask codec, counted with the real Qwen2.5 tokenizer.

    python benchmarks/tam_tokens.py [--n 3000] [--grid 16] [--tokenizer PATH/tokenizer.json]

Masks are drawn at frame resolution (256x256) and turned into grids by the coverage rule, like training data:
empty, blobs (ellipses), scratches (thin lines), several components, several labels, nearly full, full.
The tokenizer is found like the tests find it (tests/helpers/qwen_tokenizer.py) unless --tokenizer is given.
Counts are of the codec text alone; the <seg> </seg> tags add the same to every codec.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from omniad_edge import tam

FRAME = 256


def ellipse(draw, rng, label):
    cx, cy = rng.uniform(0, FRAME, 2)
    rx, ry = rng.uniform(6, 60, 2)
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=label)


def scratch(draw, rng, label):
    x0, y0 = rng.uniform(0, FRAME, 2)
    angle, length = rng.uniform(0, np.pi), rng.uniform(40, 220)
    pts = [(x0, y0)]
    for _ in range(int(rng.integers(1, 4))):  # a slightly bent line
        angle += rng.normal(0, 0.3)
        x0, y0 = x0 + np.cos(angle) * length / 3, y0 + np.sin(angle) * length / 3
        pts.append((x0, y0))
    draw.line(pts, fill=label, width=int(rng.integers(2, 9)))


def make_mask(kind: str, rng) -> np.ndarray:
    img = Image.new("L", (FRAME, FRAME), 0)
    draw = ImageDraw.Draw(img)
    if kind == "blob":
        ellipse(draw, rng, 1)
    elif kind == "scratch":
        scratch(draw, rng, 1)
    elif kind == "several":
        for _ in range(int(rng.integers(2, 6))):
            (ellipse if rng.random() < 0.5 else scratch)(draw, rng, 1)
    elif kind == "multilabel":
        for _ in range(int(rng.integers(2, 5))):
            (ellipse if rng.random() < 0.5 else scratch)(draw, rng, int(rng.integers(1, 3)))
    elif kind == "large":
        draw.rectangle([0, 0, FRAME, FRAME], fill=1)
        for _ in range(int(rng.integers(1, 4))):
            ellipse(draw, rng, 0)
    elif kind == "full":
        draw.rectangle([0, 0, FRAME, FRAME], fill=1)
    return np.asarray(img)


def decimal_ranges(grid: np.ndarray, one_based: bool) -> str:
    """The first idea for a compact codec, kept here only as a measured baseline: "ROW:START-END,START-END" per
    non-empty row, rows joined by ";", label names where they change, "none" when empty."""
    items, label, base = [], 1, int(one_based)
    for r, row in enumerate(grid):
        runs, c = [], 0
        while c < len(row):
            if not row[c]:
                c += 1
                continue
            e = c
            while e < len(row) and row[e] == row[c]:
                e += 1
            prefix = f"l{row[c]} " if row[c] != label else ""
            label = row[c]
            runs.append(prefix + (f"{c + base}-{e - 1 + base}" if e - 1 > c else f"{c + base}"))
            c = e
        if runs:
            items.append(f"{r + base}:" + ",".join(runs))
    return ";".join(items) or "none"


KINDS = {"empty": 0.15, "blob": 0.3, "scratch": 0.25, "several": 0.15, "multilabel": 0.1, "large": 0.04, "full": 0.01}


def find_tokenizer(path: str | None) -> Path:
    if path:
        return Path(path)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers.qwen_tokenizer import locate_qwen_tokenizer

    found, reason = locate_qwen_tokenizer()
    if found is None:
        sys.exit(f"real Qwen2.5 tokenizer unavailable: {reason} (pass --tokenizer PATH)")
    return found


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--grid", type=int, default=16)
    ap.add_argument("--coverage", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer")
    args = ap.parse_args()

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(find_tokenizer(args.tokenizer)))
    count = lambda s: len(tok.encode(s, add_special_tokens=False).ids)  # noqa: E731
    labels = ["others", "scratch", "crack"]
    codecs = {name: tam.Codec(name, grid=args.grid, labels=labels) for name in tam.CODECS}
    rng = np.random.default_rng(args.seed)
    kinds = rng.choice(list(KINDS), size=args.n, p=list(KINDS.values()))
    baselines = {"dec0": lambda g: decimal_ranges(g, False), "dec1": lambda g: decimal_ranges(g, True)}
    tokens = {name: {k: [] for k in KINDS} for name in [*codecs, *baselines]}
    chars = {name: [] for name in tokens}
    for kind in kinds:
        grid = tam.mask_to_grid(make_mask(kind, rng), args.grid, args.coverage)
        for name, codec in codecs.items():
            text = codec.encode(grid)
            assert np.array_equal(codec.decode(text).grid, grid)
            tokens[name][kind].append(count(text))
            chars[name].append(len(text))
        for name, fn in baselines.items():
            text = fn(grid)
            tokens[name][kind].append(count(text))
            chars[name].append(len(text))

    print(f"# {args.n} masks, {args.grid}x{args.grid} grid, coverage {args.coverage}, Qwen2.5 tokenizer; "
          f"kinds: " + ", ".join(f"{k} {int((kinds == k).sum())}" for k in KINDS))
    print(f"tags <seg></seg> add {count('<seg>') + count('</seg>')} tokens to every codec "
          f"(as plain text; fewer if they are added tokens)")
    print(f"\n{'codec':8s} {'masks':10s} {'mean':>7s} {'median':>7s} {'p90':>6s} {'max':>5s}")
    for name in tokens:
        all_counts = np.concatenate([np.array(v) for v in tokens[name].values() if v])
        for label, values in [("all", all_counts)] + [(k, np.array(v)) for k, v in tokens[name].items() if v]:
            print(f"{name:8s} {label:10s} {values.mean():7.1f} {np.median(values):7.1f} "
                  f"{np.percentile(values, 90):6.1f} {values.max():5d}")
        print(f"{name:8s} chars/mask mean {np.mean(chars[name]):.1f}\n")
    non_empty = lambda n: np.concatenate([np.array(v) for k, v in tokens[n].items() if v and k != "empty"])  # noqa
    ratio = non_empty("rle").mean() / non_empty("compact").mean()
    print(f"non-empty masks: rle / compact mean tokens = {ratio:.1f}x; decimal 0-based idea / compact = "
          f"{non_empty('dec0').mean() / non_empty('compact').mean():.1f}x")
    print("(dec0/dec1: the decimal 'ROW:START-END' idea, 0- and 1-based, measured as a baseline only)")


if __name__ == "__main__":
    main()
