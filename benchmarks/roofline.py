"""Memory-bandwidth roofline for decode: a decode step must read every decoder weight and the KV cache once, so
bytes_per_token / bandwidth is a lower bound of its time; measured_time vs that bound says how close we are.

    python benchmarks/roofline.py BUNDLE_DIR [--context 160] [--decode-ms 30.0]

Bandwidth is measured in the same process (numpy reductions over a buffer far larger than the caches, one and
several threads; the best median counts, so the bound is never made easier than the machine allows).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def measure_bandwidth(mib: int = 512, repeats: int = 7, threads: int | None = None) -> dict:
    """Median read bandwidth (GB/s, 1e9 bytes) of np.sum over `mib` MiB, with 1 and with `threads` threads."""
    threads = threads or len(os.sched_getaffinity(0))
    data = np.ones(mib * 2**20 // 4, np.float32)  # touched, so pages are resident before timing
    nbytes = data.nbytes

    def read_once(parts: int) -> float:
        chunks = np.array_split(data, parts)
        start = time.perf_counter()
        if parts == 1:
            data.sum()
        else:  # numpy releases the GIL inside the reduction loop, so threads read in parallel
            with ThreadPoolExecutor(parts) as pool:
                list(pool.map(np.sum, chunks))
        return nbytes / (time.perf_counter() - start) / 1e9

    result = {"buffer_mib": mib, "repeats": repeats}
    for parts in sorted({1, threads}):
        read_once(parts)  # warm-up
        result[f"read_gbps_{parts}t"] = statistics.median(read_once(parts) for _ in range(repeats))
    result["best_gbps"] = max(v for k, v in result.items() if k.startswith("read_gbps"))
    return result


def decoder_weight_bytes(bundle_dir) -> int:
    """Bytes of the decoder graph's weights: the decoder's files as listed in the manifest (graph + external data).

    The embedding table is not read by a decode step (one row is gathered on the host), so it is not counted."""
    manifest = json.loads((Path(bundle_dir) / "manifest.json").read_text())
    decoder = manifest["graphs"]["decoder"]["path"]
    return sum(int(entry["bytes"]) for name, entry in manifest["files"].items()
               if name == decoder or name.startswith(decoder + "."))


def kv_bytes(model: dict, context: int, dtype_bytes: int = 4) -> int:
    """Bytes of K and V read by one decode step attending over `context` positions."""
    return 2 * int(model["num_layers"]) * context * int(model["num_key_value_heads"]) * int(model["head_dim"]) \
        * dtype_bytes


def roofline(bundle_dir, context: int, decode_ms: float, bandwidth_gbps: float) -> dict:
    """Bytes per decode token, the bandwidth-bound time and the share of that bound a measured step reaches."""
    manifest = json.loads((Path(bundle_dir) / "manifest.json").read_text())
    weights = decoder_weight_bytes(bundle_dir)
    kv = kv_bytes(manifest["model"], context)
    total = weights + kv
    bound_ms = total / (bandwidth_gbps * 1e9) * 1e3
    return {"weight_bytes": weights, "kv_bytes": kv, "bytes_per_token": total, "context": context,
            "bandwidth_gbps": bandwidth_gbps, "bound_ms": bound_ms, "decode_ms": decode_ms,
            "percent_of_bound": 100.0 * bound_ms / decode_ms,
            "achieved_gbps": total / (decode_ms / 1e3) / 1e9}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle")
    p.add_argument("--context", type=int, default=160, help="positions attended by the decode step")
    p.add_argument("--decode-ms", type=float, default=None, help="a measured decode step to compare with")
    args = p.parse_args(argv)
    bw = measure_bandwidth()
    print(json.dumps(bw, indent=1))
    if args.decode_ms:
        print(json.dumps(roofline(args.bundle, args.context, args.decode_ms, bw["best_gbps"]), indent=1))
    else:
        print(f"decoder weights {decoder_weight_bytes(args.bundle) / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
