"""Native core figures: sampler vs plain numpy on Qwen-sized logits, Text-as-Mask decode + upsample to 1080p.

    python benchmarks/bench_native.py [--repeats 200] > benchmarks/results/native.txt

Prints medians (microseconds) and speed ratios against numpy run in the same process, with the load average at
start and end. The numpy baselines are what a careful numpy user writes: float32 throughout, and for top-p the
nucleus found with argpartition over a growing candidate set (no float64, no full argsort). Targets: top-p >= 10x
faster than numpy, greedy no slower than numpy.argmax, decode + upsample well under a millisecond.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from omniad_edge import tam
from omniad_edge.sampling import Sampler

V = 151936


def median_us(fn, repeats: int) -> float:
    fn()  # warm-up: page in buffers, build scratch space
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e6)


def llm_like_logits(seed: int = 0) -> np.ndarray:
    """A long tail around 0 and a head of a few dozen plausible tokens, like a language model's next-token logits."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(V).astype(np.float32) * 2.5
    head = rng.choice(V, 64, replace=False)
    x[head] += rng.uniform(6, 14, 64).astype(np.float32)
    return x


def np_top_p(x, temperature, top_p, rng, first_k: int = 64):
    """Top-p in float32 numpy without a full sort: softmax weights once, then the k largest by argpartition,
    sorted, until their cumulative weight reaches top_p (k grows 4x when it does not); one uniform draw."""
    y = x * np.float32(1.0 / temperature)
    w = np.exp(y - y.max())
    target = np.float32(top_p) * w.sum()
    k = first_k
    while True:
        k = min(k, w.size)
        top = np.argpartition(w, w.size - k)[w.size - k:]
        top = top[np.argsort(-w[top], kind="stable")]
        cum = np.cumsum(w[top])
        if cum[-1] >= target or k == w.size:
            break
        k *= 4
    n = min(int(np.searchsorted(cum, target)) + 1, k)
    return int(top[np.searchsorted(cum[:n], rng.random() * cum[n - 1], side="right")])


def nucleus_size_f64(x, temperature, top_p) -> int:
    """The nucleus size by the plain float64 definition (full sort): the check that np_top_p keeps the same set."""
    p = np.exp((x.astype(np.float64) - x.max()) / temperature)
    cum = np.cumsum(np.sort(p)[::-1]) / p.sum()
    return int(np.searchsorted(cum, top_p)) + 1


def np_top_k_top_p(x, temperature, k, top_p, rng):
    y = x * np.float32(1.0 / temperature)
    top = np.argpartition(-y, k)[:k]
    top = top[np.argsort(-y[top], kind="stable")]
    w = np.exp(y[top] - y[top[0]])
    cum = np.cumsum(w)
    n = int(np.searchsorted(cum, np.float32(top_p) * cum[-1])) + 1
    return int(top[np.searchsorted(cum[:n], rng.random() * cum[n - 1], side="right")])


def np_greedy_logprob(x):
    i = int(np.argmax(x))
    m = x[i]
    return i, float(-np.log(np.exp(x - m).sum()))


def row(name, ours, theirs=None, theirs_name=""):
    ratio = f"{theirs / ours:8.1f}x faster than {theirs_name}" if theirs else ""
    base = f"{theirs:10.1f} us" if theirs else " " * 13
    print(f"{name:44s} {ours:10.1f} us   numpy {base}  {ratio}")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    r = args.repeats
    print(f"# {platform.machine()} {platform.processor() or ''} numpy {np.__version__}; V = {V}; medians of {r}; "
          f"load average {os.getloadavg()[0]:.2f} at start")
    x = llm_like_logits()
    x16 = x.astype(np.float16)
    rng = np.random.default_rng(0)

    print("\n## sampler (one row of 151,936 logits)")
    greedy = Sampler()
    row("greedy ids (sample_ids)", median_us(lambda: greedy.sample_ids(x), r), median_us(lambda: np.argmax(x), r),
        "numpy.argmax")
    row("greedy ids + logprob (sample)", median_us(lambda: greedy.sample(x), r),
        median_us(lambda: np_greedy_logprob(x), r), "argmax+logsumexp")
    row("greedy ids, float16 logits", median_us(lambda: greedy.sample_ids(x16), r),
        median_us(lambda: np.argmax(x16), r), "numpy.argmax(f16)")
    allowed = rng.random(V) < 0.01
    bits = np.packbits(np.r_[allowed, np.zeros(-V % 32, bool)], bitorder="little").view(np.uint32)
    row("greedy ids, 1% allowed mask (packed)", median_us(lambda: greedy.sample_ids(x, allowed_mask=bits), r),
        median_us(lambda: np.argmax(np.where(allowed, x, -np.inf)), r), "numpy where+argmax")
    prev = rng.integers(0, V, 256)
    pen = Sampler(repetition_penalty=1.1)
    row("greedy ids, penalty over 256 previous", median_us(lambda: pen.sample_ids(x, previous=prev), r))

    top_p = Sampler(temperature=0.8, top_p=0.9, seed=1)
    flat = (np.random.default_rng(1).standard_normal(V) * 0.5).astype(np.float32)
    for name, logits in (("LLM-like", x), ("flat", flat)):
        print(f"   nucleus of top-p 0.9, T 0.8 on {name} logits: {nucleus_size_f64(logits, 0.8, 0.9)} tokens")
    row("top-p 0.9, T 0.8 (sample_ids)", median_us(lambda: top_p.sample_ids(x), r),
        median_us(lambda: np_top_p(x, 0.8, 0.9, rng), r), "numpy f32 argpartition")
    row("top-p 0.9, T 0.8 + logprob (sample)", median_us(lambda: top_p.sample(x), r))
    row("top-p 0.9 on flat logits (worst case)", median_us(lambda: top_p.sample_ids(flat), max(10, r // 4)),
        median_us(lambda: np_top_p(flat, 0.8, 0.9, rng), max(10, r // 4)), "numpy f32 argpartition")
    kp = Sampler(temperature=0.8, top_k=40, top_p=0.95, seed=1)
    row("top-k 40 + top-p 0.95", median_us(lambda: kp.sample_ids(x), r),
        median_us(lambda: np_top_k_top_p(x, 0.8, 40, 0.95, rng), r), "numpy argpartition")
    mp = Sampler(temperature=1.0, min_p=0.05, seed=1)
    row("min-p 0.05", median_us(lambda: mp.sample_ids(x), r))
    pure = Sampler(temperature=1.0, seed=1)
    row("plain temperature 1.0", median_us(lambda: pure.sample_ids(x), r))
    xb = np.tile(x, (8, 1))
    row("top-p 0.9, batch 8 (per call)", median_us(lambda: top_p.sample_ids(xb), max(10, r // 4)))

    print("\n## Text-as-Mask (16x16 grid -> 1920x1080)")
    codec = tam.Codec("compact")
    g = np.zeros((16, 16), np.uint8)
    g[5:9, 6:10] = 1
    g[12, 2:14] = 1
    text = "<seg>" + codec.encode(g) + "</seg>"
    rle = tam.Codec("rle")
    rle_text = "<seg>" + rle.encode(g) + "</seg>"
    row("decode compact", median_us(lambda: codec.decode(text), r * 5))
    row("decode rle", median_us(lambda: rle.decode(rle_text), r * 5))
    row("grid_to_mask 1080p (nearest)", median_us(lambda: tam.grid_to_mask(g, (1080, 1920)), r))
    row("decode + grid_to_mask 1080p (nearest)",
        median_us(lambda: tam.grid_to_mask(codec.decode(text).grid, (1080, 1920)), r),
        median_us(lambda: np.repeat(np.repeat(g, 68, 0)[:1080], 120, 1) != 0, r), "np.repeat")
    row("decode + grid_to_mask 1080p (smooth)",
        median_us(lambda: tam.grid_to_mask(codec.decode(text).grid, (1080, 1920), smooth=True), r))
    row("components on grid, boxes in 1080p", median_us(lambda: tam.components(g, (1080, 1920)), r))
    m = tam.grid_to_mask(g, (1080, 1920), smooth=True)
    row("components on a 1080p mask", median_us(lambda: tam.components(m), max(10, r // 4)))
    row("mask_to_grid 1080p -> 16x16", median_us(lambda: tam.mask_to_grid(m, 16, 0.02), max(10, r // 4)))
    print(f"\n# load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
