"""Peak activation memory of the grouped vision graph: the formula, against the peaks vision_scaling.py measured.

    python benchmarks/vision_memory_formula.py benchmarks/results/vision-scaling.json

Bytes, for N patches (4 per image token), tower width D, H heads of hd = D/H, MLP width I, matmul dtype bytes b
(4 fp32 and int8 outputs, 2 fp16), window groups padded to Nw rows (windows * 64; = N when the sides are multiples
of 112 px), frame groups padded to Nf rows (= N for one image). Softmax and the residual stream are float32.

  live through the tower  4 N D (residual) + 8 N hd (rotary cos, sin)
  window block, plain     N D (4 + 3b) (norm out, qkv) + 4 Nw D b (grouped q, k, v, output) + 12 Nw H Lw (scores)
  window block, fused     N D (4 + 3b) + Nw (2 H (hd + 1) + 2 D) b (fp16 graphs)
  full block, fused       N D (4 + 3b) + Nf (2 H (hd + 1) + 2 D) b (extended q, k; v; output; no scores)
  full block, plain       N D (4 + 3b) + 4 Nf D b + 12 Nf H Nf (the (frames, H, Lf, Lf) scores: TensorRT form)
  MLP                     N D (4 + b) + 4 N I b (gate, up, activation, product; fp32 in the last fp16 blocks)
  int8                    + N max(D, I) (the uint8 copy of the activation that MatMulInteger reads)
  peak = live + max over block kinds and MLP; the depth does not enter (blocks run one after another).
"""
from __future__ import annotations

import json
import sys


def vision_peak_bytes(n: int, d: int, heads: int, inter: int, precision: str, *, window: int = 64,
                      padded_window_rows: int | None = None, padded_frame_rows: int | None = None,
                      fused_full: bool = True, fused_window: bool = False) -> dict:
    b = 2 if precision == "fp16" else 4
    hd = d // heads
    nw = padded_window_rows or n
    nf = padded_frame_rows or n
    live = 4 * n * d + 8 * n * hd
    base = n * d * (4 + 3 * b)
    fused_rows = (2 * heads * (hd + 1) + 2 * d) * b
    window_block = base + (nw * fused_rows if fused_window else 4 * nw * d * b + 12 * nw * heads * window)
    full_block = base + (nf * fused_rows if fused_full else 4 * nf * d * b + 12 * nf * heads * nf)
    mlp_b = 4 if precision == "fp16" else b  # fp16 bundles keep the last blocks' MLP in float32
    mlp = n * d * (4 + mlp_b) + 4 * n * inter * mlp_b
    quant = n * max(d, inter) if precision == "int8" else 0
    parts = {"live": live, "window_block": window_block, "full_block": full_block, "mlp": mlp + quant}
    return {**parts, "peak": live + max(window_block, full_block, mlp + quant)}


def main() -> None:
    result = json.loads(open(sys.argv[1]).read())
    v = result["checkpoint"]["vision"]
    print("| frame | tokens | precision | predicted MB | measured peak extra MB |")
    print("| --- | ---: | --- | ---: | ---: |")
    for row in result["rows"]:
        n = 4 * row["tokens"]
        for precision in ("fp32", "fp16", "int8"):
            pred = vision_peak_bytes(n, v["hidden_size"], v["num_heads"], v["intermediate_size"], precision,
                                     fused_window=precision == "fp16")
            print(f"| {row['frame']} | {row['tokens']} | {precision} | {pred['peak'] / 2**20:.0f} | "
                  f"{row[precision]['peak_extra_mb']:.0f} |")


if __name__ == "__main__":
    main()
