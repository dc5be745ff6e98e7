"""`omniad-edge bench`: per-stage latency of Inspector.run on one bundle, as a Markdown table (and JSON).

    omniad-edge bench [BUNDLE] [--frames 20] [--warmup 2] [--mode detect|explain] [--provider cpu] [--json FILE]
        [--markdown FILE]

Stages (ms): preprocess, vision, prefill, decode per token, Text-as-Mask decode, postprocess, end to end; each as
min / p50 / p90 / p99 over the measured frames (warm-up frames are dropped). Also tokens per second (both decode
figures from decoder forwards: `decode_speed`), the share of the decode loop spent outside the decoder's session
run (host overhead), peak resident memory, device memory where a GPU provider runs, the device's state over the
measured frames (power mode, clocks, temperature, energy per frame, load: omniad_edge.devicestate, with its
warnings), the machine and the library versions. Frames are synthetic parts (omniad_edge.synth), so runs are
reproducible. The figures are measurements, never assertions: compare runs of the same machine.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from .contract import output_blocks
from .errors import OmniADError

__all__ = ["BenchError", "summarize", "percentile", "markdown_table", "machine_info", "library_versions",
           "peak_rss_mib", "decode_speed", "ForwardTimer", "run_bench", "format_report", "add_parser", "main"]

STAGES = ("preprocess", "vision", "prefill", "decode_per_token", "tam_decode", "postprocess", "total")
STAGE_TITLES = {"preprocess": "preprocess", "vision": "vision", "prefill": "prefill",
                "decode_per_token": "decode / token", "tam_decode": "Text-as-Mask decode",
                "postprocess": "postprocess (mask, boxes)", "total": "end to end"}
LIBRARIES = ("omniad-edge", "numpy", "onnxruntime", "onnxruntime-gpu", "tokenizers", "pillow", "llguidance",
             "onnxruntime-genai", "torch", "transformers")


class BenchError(OmniADError, ValueError):
    """Bad benchmark arguments (frame counts, sizes, modes) or samples that cannot be summarised."""


# -- statistics ------------------------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks (numpy's default method)."""
    if not 0 <= q <= 100:
        raise BenchError(f"q must be in [0, 100], got {q!r}")
    data = sorted(_finite(values, "values"))
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summarize(values: Sequence[float]) -> dict:
    """min / p50 / p90 / p99 / max / mean of a non-empty sample of finite numbers, plus its size n."""
    data = _finite(values, "values")
    return {"n": len(data), "min": min(data), "p50": percentile(data, 50), "p90": percentile(data, 90),
            "p99": percentile(data, 99), "max": max(data), "mean": sum(data) / len(data)}


def _finite(values, name: str) -> list[float]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise BenchError(f"{name} must be a sequence of numbers, got {type(values).__name__}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) and not hasattr(v, "__float__"):
            raise BenchError(f"{name} must hold numbers, got {v!r}")
        f = float(v)
        if not math.isfinite(f):
            raise BenchError(f"{name} must be finite, got {v!r}")
        out.append(f)
    if not out:
        raise BenchError(f"{name} is empty: nothing to summarise")
    return out


def markdown_table(header: Sequence[str], rows: Sequence[Sequence], digits: int = 2) -> str:
    """A GitHub Markdown table; floats get `digits` decimals, None prints as an em dash, text is left aligned."""
    if not header:
        raise BenchError("header must name at least one column")
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise BenchError(f"row {i} has {len(row)} cells, the header has {len(header)}")

    def cell(v) -> str:
        if v is None:
            return "—"
        if isinstance(v, float):
            return f"{v:.{digits}f}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    text = [[cell(v) for v in row] for row in rows]
    numeric = [bool(rows) and all(r[j] is None or (isinstance(r[j], (int, float)) and not isinstance(r[j], bool))
                                  for r in rows) for j in range(len(header))]
    widths = [max([len(str(h))] + [len(r[j]) for r in text]) for j, h in enumerate(header)]
    lines = ["| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths)) + " |",
             "| " + " | ".join(("-" * (w - 1) + ":") if numeric[j] else "-" * w for j, w in enumerate(widths))
             + " |"]
    for r in text:
        lines.append("| " + " | ".join(c.rjust(w) if numeric[j] else c.ljust(w)
                                       for j, (c, w) in enumerate(zip(r, widths))) + " |")
    return "\n".join(lines)


# -- machine ---------------------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """CPU model, cores (logical, usable by this process), memory, OS and Python: what a figure depends on."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"cpu": _cpu_model(), "logical_cores": os.cpu_count(), "usable_cores": usable,
            "machine": platform.machine(), "os": platform.platform(), "python": platform.python_version()}
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    try:
        info["load_average_1m"] = round(os.getloadavg()[0], 2)  # other work on a shared machine skews figures
    except OSError:
        pass
    return info


def library_versions(names: Sequence[str] = LIBRARIES) -> dict:
    """Installed distribution versions, read from metadata (nothing is imported); absent ones are left out."""
    from importlib import metadata

    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    if "omniad-edge" not in out:
        from ._version import __version__

        out["omniad-edge"] = __version__  # a source checkout is not an installed distribution
    return out


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def device_memory_mib() -> float | None:
    """GPU memory this process holds (nvidia-smi), MiB; None without an NVIDIA GPU or nvidia-smi."""
    try:
        run = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if run.returncode != 0:
        return None
    total = None
    for line in run.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(os.getpid()) and parts[1].isdigit():
            total = (total or 0.0) + float(parts[1])
    return total


# -- measurement -----------------------------------------------------------------------------------------------
def decode_speed(decode_ms: float, forwards: int) -> dict | None:
    """Decode speed of one generation: {"ms_per_token", "tokens_per_s"}, both per decoder forward.

    The one definition used by `omniad-edge bench` and benchmarks/compare.py, for every runtime compared. decode_ms
    is the wall time from the prefill's logits to the last token; forwards the decoder runs in it. The first token
    is sampled from the prefill's logits and costs no forward, so dividing by generated tokens would report a detect
    frame of 2 tokens and 1 forward at twice its speed; forced tokens fed in one run count once. None when no
    forward ran (a generation of one token)."""
    if isinstance(forwards, bool) or not isinstance(forwards, int) or forwards < 0:
        raise BenchError(f"forwards must be an int >= 0, got {forwards!r}")
    if not math.isfinite(decode_ms) or decode_ms < 0:
        raise BenchError(f"decode_ms must be finite and >= 0, got {decode_ms!r}")
    if forwards == 0 or decode_ms == 0:
        return None
    return {"ms_per_token": decode_ms / forwards, "tokens_per_s": forwards / (decode_ms / 1e3)}


class ForwardTimer:
    """Splits the decode loop's time into the decoder graph run and everything else (the host loop overhead).

    Attach it as the backend's documented `on_forward` hook (omniad_edge/backends/__init__.py), which reports the
    tokens, wall time and graph time of every forward. Single-token calls are decode steps."""

    def __init__(self, backend=None):
        self.calls: list[tuple[int, float, float]] = []  # (new tokens, forward ms, graph ms)
        if backend is not None:
            backend.on_forward = self

    def __call__(self, new_tokens: int, forward_s: float, graph_s: float) -> None:
        self.calls.append((int(new_tokens), forward_s * 1e3, graph_s * 1e3))

    def reset(self) -> None:
        self.calls.clear()

    def decode_session_ms(self) -> tuple[float, int]:
        """(ms inside the graph run over single-token calls, number of such calls) since the last reset."""
        steps = [c for c in self.calls if c[0] == 1]
        return sum(c[2] for c in steps), len(steps)


def _tam_decode_ms(codec, text: str, repeats: int = 20) -> float:
    """Median ms of one codec.decode (repeated: one decode takes microseconds, below the timer's resolution)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        codec.decode(text)
        times.append((time.perf_counter() - start) * 1e3)
    return percentile(times, 50)


def _check_int(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise BenchError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def check_options(*, frames, warmup, mode, size, max_new_tokens, references, threads) -> None:
    """Validate run_bench's options; BenchError names the bad one and what was expected."""
    _check_int(frames, "frames", 1)
    _check_int(warmup, "warmup", 0)
    if mode not in ("detect", "explain"):
        raise BenchError(f"mode must be 'detect' or 'explain', got {mode!r}")
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and 32 <= s <= 4096 for s in size)):
        raise BenchError(f"size must be (height, width) ints in [32, 4096], got {size!r}")
    if max_new_tokens is not None:
        _check_int(max_new_tokens, "max_new_tokens", 1)
    _check_int(references, "references", 0)
    if threads is not None:
        _check_int(threads, "threads", 0)


def run_bench(bundle=None, *, frames: int = 20, warmup: int = 2, mode: str = "detect", providers=None,
              threads: int | None = None, max_new_tokens: int | None = None, size=(224, 224), references: int = 0,
              seed: int = 0, inspector_options: dict | None = None) -> dict:
    """Run Inspector.run on warmup + frames synthetic frames; returns the JSON-ready result (see format_report)."""
    check_options(frames=frames, warmup=warmup, mode=mode, size=size, max_new_tokens=max_new_tokens,
                  references=references, threads=threads)
    from . import devicestate, synth
    from .inspector import Inspector

    height, width = size
    first = synth.FIRST_UNSEEN_SEED + seed  # frames the reference model never trained on
    samples = [synth.make_sample(first + i, size=(height, width)) for i in range(warmup + frames)]
    # normal parts other than the measured ones
    refs = [synth.make_sample(first + warmup + frames + i, size=(height, width), anomalous=False).image
            for i in range(references)]
    start = time.perf_counter()
    inspector = Inspector(bundle, mode=mode, providers=providers, threads=threads, max_new_tokens=max_new_tokens,
                          reference=refs or None, **(inspector_options or {}))
    load_ms = (time.perf_counter() - start) * 1e3
    timer = ForwardTimer(inspector.backend)
    codec = inspector.codec

    per_stage = {k: [] for k in STAGES}
    tokens_per_s, overhead, generated, forwards, prompt_tokens, finish, tam_sources = [], [], [], [], [], {}, set()
    recorder = devicestate.Recorder(usable_cores=machine_info()["usable_cores"])
    for i, sample in enumerate(samples):
        if i == warmup:
            recorder.start()
        timer.reset()
        result = inspector.run(sample.image)
        if i < warmup:
            continue
        t = result.timings
        for k in ("preprocess", "vision", "prefill", "postprocess", "total"):
            per_stage[k].append(t[k])
        speed = decode_speed(t["decode"], result.decode_forwards)
        if speed is not None:
            per_stage["decode_per_token"].append(speed["ms_per_token"])
            tokens_per_s.append(speed["tokens_per_s"])
        inside, steps = timer.decode_session_ms()
        if steps and t["decode"] > 0:
            overhead.append(100.0 * max(0.0, t["decode"] - inside) / t["decode"])
        mask_text = output_blocks(result.text, inspector.tags).get("mask")  # what the Inspector decodes
        if mask_text is None:  # the model wrote no mask (e.g. random weights): time the frame's true mask instead
            mask_text = codec.encode_mask(sample.mask)
            tam_sources.add("ground-truth mask of the frame (the model wrote none)")
        else:
            tam_sources.add("generated mask text")
        per_stage["tam_decode"].append(_tam_decode_ms(codec, mask_text))
        generated.append(result.generated_tokens)
        forwards.append(result.decode_forwards)
        prompt_tokens.append(result.prompt_tokens)
        finish[result.finish_reason] = finish.get(result.finish_reason, 0) + 1

    device_state = recorder.stop(frames)
    bundle_info = inspector.bundle
    return {
        "bundle": {"name": bundle_info.name, "path": str(bundle_info.root), "precision": bundle_info.precision,
                   "hidden_size": bundle_info.model.get("hidden_size"), "num_layers": bundle_info.model.get("num_layers"),
                   "vocab_size": bundle_info.model.get("vocab_size")},
        "options": {"frames": frames, "warmup": warmup, "mode": mode, "providers": providers, "threads": threads,
                    "max_new_tokens": inspector.max_new_tokens, "size": [height, width], "references": references,
                    "seed": seed, **{k: v for k, v in (inspector_options or {}).items() if _jsonable(v)}},
        "provider": inspector.backend.provider,
        "spinning": getattr(inspector.backend, "spinning", None),  # ONNX Runtime's thread spinning (ORT backend)
        # the C API decode step (backends/onnxruntime.py) or the Python loop: its host share differs several-fold
        "decode_step": "native" if getattr(inspector.backend, "native", None) is not None else "Python",
        "load_ms": load_ms,
        "stages_ms": {k: summarize(v) for k, v in per_stage.items() if v},
        "tokens_per_s": summarize(tokens_per_s) if tokens_per_s else None,
        "decode_overhead_pct": summarize(overhead) if overhead else None,
        "generated_tokens": summarize(generated),
        "decode_forwards": summarize(forwards),
        "prompt_tokens": summarize(prompt_tokens),
        "finish_reasons": finish,
        "tam_decode_source": sorted(tam_sources),
        "peak_rss_mib": peak_rss_mib(),
        "device_memory_mib": device_memory_mib() if inspector.backend.provider != "CPUExecutionProvider" else None,
        "device_state": device_state,
        "machine": machine_info(),
        "libraries": library_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _jsonable(v) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


def format_report(result: dict) -> str:
    """The Markdown summary of a run_bench result: the stage table, then throughput, memory, machine."""
    rows = []
    for k in STAGES:
        s = result["stages_ms"].get(k)
        if s is not None:
            rows.append([STAGE_TITLES[k], s["min"], s["p50"], s["p90"], s["p99"]])
    b, o, m = result["bundle"], result["options"], result["machine"]
    step = f", {result['decode_step']} decode step" if result.get("decode_step") else ""
    spin = "" if result.get("spinning") is None else f", spinning {'on' if result['spinning'] else 'off'}"
    lines = [f"## omniad-edge bench: {b['name']} ({b['precision']}, {result['provider']}{step})", "",
             f"{o['frames']} frames of {o['size'][0]}x{o['size'][1]} after {o['warmup']} warm-up, mode {o['mode']}, "
             f"max_new_tokens {o['max_new_tokens']}, references {o['references']}, threads "
             f"{o['threads'] if o['threads'] is not None else 'default'}{spin}; prompt "
             f"{result['prompt_tokens']['p50']:.0f} tokens, generated {result['generated_tokens']['p50']:.0f} "
             f"(median; finish {result['finish_reasons']})", "",
             markdown_table(["stage (ms)", "min", "p50", "p90", "p99"], rows, digits=3), ""]
    if result["tokens_per_s"]:
        tps = result["tokens_per_s"]
        per_frame = (result.get("decode_forwards") or {}).get("p50")
        lines.append(f"- decode: {tps['p50']:.1f} tokens/s (p50; min {tps['min']:.1f}), per decoder forward"
                     + (f" ({per_frame:.0f} per frame, p50)" if per_frame is not None else "")
                     + ": the first token, sampled from the prefill's logits, is not counted")
    if result["decode_overhead_pct"]:
        lines.append(f"- decode loop outside the session run: {result['decode_overhead_pct']['p50']:.2f}% (p50)")
    if "tam_decode" in result["stages_ms"]:
        lines.append(f"- Text-as-Mask decode timed on: {'; '.join(result['tam_decode_source'])}")
    device = result["device_memory_mib"]
    lines.append(f"- peak resident memory {result['peak_rss_mib']:.0f} MiB"
                 + (f", device memory {device:.0f} MiB" if device is not None else ", no device memory (CPU)"))
    if result.get("device_state"):
        from .devicestate import describe

        lines += describe(result["device_state"])
    lines.append(f"- machine: {m['cpu']}, {m['usable_cores']}/{m['logical_cores']} cores usable, "
                 f"{m.get('memory_gib', '?')} GiB, load {m.get('load_average_1m', '?')}; {m['os']}")
    lines.append("- libraries: " + ", ".join(f"{k} {v}" for k, v in result["libraries"].items()))
    return "\n".join(lines)


# -- command line ----------------------------------------------------------------------------------------------
def _arg_int(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an int >= {low}, got {value}")
        return value

    return parse


def _configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("bundle", nargs="?", default=None,
                   help="bundle directory (default: the embedded bundle omniad_edge/models/default)")
    p.add_argument("--frames", type=_arg_int(1), default=20, help="measured frames (default 20)")
    p.add_argument("--warmup", type=_arg_int(0), default=2, help="frames run first and dropped (default 2)")
    p.add_argument("--mode", choices=["detect", "explain"], default="detect")
    p.add_argument("--provider", nargs="+", default=None, metavar="NAME",
                   help="execution providers: cpu, cuda, tensorrt (default cpu)")
    p.add_argument("--threads", type=_arg_int(0), default=None, help="ONNX Runtime intra-op threads")
    p.add_argument("--spinning", action="store_true",
                   help="let the decoder's ONNX Runtime threads spin between the ops of a run (faster on a quiet, "
                        "dedicated machine; off by default, as spinning threads take cores from everything else "
                        "while a run lasts)")
    p.add_argument("--max-new-tokens", type=_arg_int(1), default=None, help="default: the Inspector's per mode")
    p.add_argument("--size", type=_arg_int(32), nargs=2, default=(224, 224), metavar=("H", "W"),
                   help="frame size in pixels (default 224 224)")
    p.add_argument("--references", type=_arg_int(0), default=0,
                   help="synthetic normal reference images shown before each frame (prefilled once, cached)")
    p.add_argument("--seed", type=_arg_int(0), default=0,
                   help="first synthetic frame, counted from synth.FIRST_UNSEEN_SEED (frames never trained on)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the full result as JSON")
    p.add_argument("--markdown", default=None, metavar="FILE", help="also write the printed report to FILE")
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `bench` on an argparse subparsers object; the returned parser's defaults run main()."""
    p = subparsers.add_parser("bench", help="per-stage latency of the runtime on one bundle",
                              description=__doc__.split("\n\n")[0])
    _configure(p)
    p.set_defaults(run=main)
    return p


def build_parser() -> argparse.ArgumentParser:
    return _configure(argparse.ArgumentParser(prog="omniad-edge bench", description=__doc__.split("\n\n")[0]))


def main(args=None) -> int:
    """Run the benchmark; `args` is a parsed Namespace (from add_parser) or an argv list (None: sys.argv)."""
    if not isinstance(args, argparse.Namespace):
        args = build_parser().parse_args(args)
    result = run_bench(args.bundle, frames=args.frames, warmup=args.warmup, mode=args.mode, providers=args.provider,
                       threads=args.threads, max_new_tokens=args.max_new_tokens, size=tuple(args.size),
                       references=args.references, seed=args.seed,
                       inspector_options={"backend_options": {"spinning": True}} if args.spinning else None)
    report = format_report(result)
    print(report)
    for name, text in ((args.json, json.dumps(result, indent=1)), (args.markdown, report + "\n")):
        if name:
            path = Path(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    return 0
