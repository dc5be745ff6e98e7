"""The engine build (needs TensorRT and a CUDA device): parse each ONNX graph, apply the precision rules, build
with the planned profiles, write the engines and then the record into the bundle's `tensorrt/` folder. `plan` is the
same decision made without TensorRT (the --dry-run output).
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from ..bundle import sha256_file
from ..errors import BackendError, BundleError
from .cuda import DeviceInfo, import_tensorrt
from .limits import (BuildOptions, Profile, decoder_profiles, profiles_to_json, resolve_limits, vision_profile,
                     vision_tail_blocks)
from .memory import check_memory, estimate_memory
from .precision import (check_bundle_precision, check_precision, check_quantization, graph_precision, strongly_typed,
                        vision_fp32_layers)
from .record import ENGINE_DIR, ENGINE_FILES, RECORD, make_record, manifest_sha256

__all__ = ["build_engines", "plan"]


def _progress_monitor(trt, log: Callable[[str], None], label: str):
    """An IProgressMonitor subclass (TensorRT >= 8.6) printing top-level phases; None where unavailable."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class Monitor(base):
        def __init__(self):
            base.__init__(self)
            self._steps: dict[str, int] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self._steps[phase_name] = num_steps
            if parent_phase is None:
                log(f"[{label}] {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            total = self._steps.get(phase_name, 0)
            if total >= 10 and (step + 1) % max(1, total // 10) == 0:
                log(f"[{label}]   {phase_name}: {step + 1}/{total}")
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            self._steps.pop(phase_name, None)

    return Monitor()


def _count_quantize_layers(trt, network) -> tuple[int, int]:
    int8 = fp8 = 0
    quantize = getattr(trt.LayerType, "QUANTIZE", None)
    fp8_type = getattr(trt.DataType, "FP8", None)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if quantize is None or layer.type != quantize:
            continue
        out_type = getattr(layer, "to_type", None) or layer.get_output(0).dtype
        if fp8_type is not None and out_type == fp8_type:
            fp8 += 1
        else:
            int8 += 1
    return int8, fp8


def _build_one(trt, builder, logger, *, graph: str, onnx_path: Path, profiles: list[Profile], opts: BuildOptions,
               strong: bool, timing_cache, manifest: dict, log: Callable[[str], None]):
    """Parse one ONNX graph and build its serialized engine; returns (bytes-like, precision notes)."""
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strong else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    log(f"[{graph}] parsing {onnx_path.name}")
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BundleError(f"TensorRT cannot parse {onnx_path}: {errors}")

    inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    expected = set(profiles[0])
    if inputs != expected:
        raise BundleError(
            f"{onnx_path.name} does not follow the graph contract (docs/DESIGN.md): missing inputs "
            f"{sorted(expected - inputs)}, unexpected inputs {sorted(inputs - expected)}"
        )
    check_quantization(opts, *_count_quantize_layers(trt, network), graph)

    config = builder.create_builder_config()
    notes: dict[str, Any] = {f"{graph}_strongly_typed": strong}
    if opts.workspace_gb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_gb * (1 << 30)))
    if not opts.tf32:
        config.clear_flag(trt.BuilderFlag.TF32)  # keep fp32 builds at fp32 accuracy, matching ONNX Runtime
    if not strong:
        if opts.fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        if opts.int8:
            config.set_flag(trt.BuilderFlag.INT8)
        if opts.fp8:
            config.set_flag(trt.BuilderFlag.FP8)
        if graph == "vision" and opts.fp16:
            notes["vision_fp32_layers"] = _pin_vision_fp32(trt, network, config, manifest, opts, log)
    if timing_cache is not None:
        config.set_timing_cache(timing_cache, False)
    monitor = _progress_monitor(trt, log, graph)
    if monitor is not None:
        config.progress_monitor = monitor
    for profile in profiles:
        trt_profile = builder.create_optimization_profile()
        for name, (low, opt, high) in profile.items():
            trt_profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(trt_profile)

    log(f"[{graph}] building engine (this takes minutes; progress follows)")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"TensorRT could not build the {graph} engine (see its log above)")
    return serialized, notes


def _pin_vision_fp32(trt, network, config, manifest: dict, opts: BuildOptions, log) -> int | str:
    """Keep the overflow-prone vision MLPs in fp32; if their names cannot be found, keep the whole tower fp32."""
    depth = int(manifest["model"]["vision"].get("depth", 0))
    tail = vision_tail_blocks(manifest, opts)
    names = [network.get_layer(i).name for i in range(network.num_layers)]
    picked = vision_fp32_layers(names, depth, tail)
    if tail and not picked:
        log("[vision] the tail blocks' MLP layers could not be found by name; keeping the vision engine fp32 "
            "(export an fp16 bundle to get fp16 with fp32 islands)")
        config.clear_flag(trt.BuilderFlag.FP16)
        return "all"
    for i in picked:
        layer = network.get_layer(i)
        layer.precision = trt.float32
        for k in range(layer.num_outputs):
            layer.set_output_type(k, trt.float32)
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    log(f"[vision] {len(picked)} layers of the last {tail} blocks' MLP pinned to fp32")
    return len(picked)


def plan(bundle, opts: BuildOptions, *, device: DeviceInfo | None = None) -> dict:
    """Everything decided before TensorRT is touched: limits, profiles, memory estimate (the --dry-run output)."""
    manifest = bundle.manifest
    check_bundle_precision(manifest)
    limits = resolve_limits(manifest, opts)
    estimate = estimate_memory(manifest, limits, fp16=opts.fp16, integrated=bool(device and device.integrated),
                               root=bundle.root)
    return {
        "bundle": str(bundle.root),
        "precision": manifest.get("precision", "fp32"),
        "strongly_typed": {g: strongly_typed(opts, graph_precision(manifest, g)) for g in ("vision", "decoder")},
        "limits": asdict(limits),
        "profiles": {"vision": profiles_to_json([vision_profile(manifest, limits)]),
                     "decoder": profiles_to_json(decoder_profiles(manifest, limits))},
        "memory_estimate": {"total": estimate.total, "weights": estimate.weights, "kv_cache": estimate.kv_cache,
                            "activations": estimate.activations, "io_buffers": estimate.io_buffers,
                            "host_embeddings": estimate.host_embeddings, "overhead": estimate.overhead,
                            **estimate.parts},
        "memory_text": estimate.describe(),
    }


def build_engines(bundle_path, opts: BuildOptions, *, log: Callable[[str], None] | None = None,
                  trt=None, cuda=None) -> dict:
    """Build vision + decoder engines into BUNDLE/tensorrt and return the build record.

    `trt`/`cuda` replace the tensorrt module and the CUDA runtime wrapper (tests inject fakes). All checks that can
    fail run before the first (slow) engine build.
    """
    from ..bundle import load_bundle

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    started = time.monotonic()
    trt = trt or import_tensorrt()  # fail fast, before hashing gigabytes of weights
    bundle = load_bundle(bundle_path)
    manifest = bundle.manifest
    check_bundle_precision(manifest)
    limits = resolve_limits(manifest, opts)

    if cuda is None:
        from .cuda import load_cuda

        cuda = load_cuda()
    device = cuda.device_info(opts.device)
    check_precision(opts, device, trt.__version__, graph_precision(manifest, "decoder"))
    estimate = estimate_memory(manifest, limits, fp16=opts.fp16, integrated=device.integrated, root=bundle.root)
    log(f"device {device.name} (compute capability {device.compute_capability[0]}.{device.compute_capability[1]}), "
        f"TensorRT {trt.__version__}; runtime memory estimate {estimate.describe()}")
    if not opts.skip_memory_check:
        check_memory(estimate, device)

    out = bundle.root / ENGINE_DIR
    out.mkdir(exist_ok=True)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    cache = None
    cache_path = Path(opts.timing_cache) if opts.timing_cache else None
    if cache_path is not None:
        probe = builder.create_builder_config()
        data = cache_path.read_bytes() if cache_path.is_file() else b""
        cache = probe.create_timing_cache(data)
        if data and not probe.set_timing_cache(cache, False):
            log(f"timing cache {cache_path} is from another device or TensorRT version; starting a new one")
            cache = probe.create_timing_cache(b"")
        else:
            log(f"timing cache {cache_path} ({'loaded' if data else 'new'})")

    graphs = {"vision": (bundle.vision_path, [vision_profile(manifest, limits)]),
              "decoder": (bundle.decoder_path, decoder_profiles(manifest, limits))}
    engines, notes = {}, {}
    pid = os.getpid()
    for graph, (onnx_path, profiles) in graphs.items():
        t0 = time.monotonic()
        strong = strongly_typed(opts, graph_precision(manifest, graph))
        serialized, note = _build_one(trt, builder, logger, graph=graph, onnx_path=onnx_path, profiles=profiles,
                                      opts=opts, strong=strong, timing_cache=cache, manifest=manifest, log=log)
        tmp = out / f".{ENGINE_FILES[graph]}.{pid}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(memoryview(serialized))
        del serialized
        notes.update(note)
        engines[graph] = {"path": ENGINE_FILES[graph], "sha256": sha256_file(tmp), "bytes": tmp.stat().st_size,
                          "build_seconds": round(time.monotonic() - t0, 1), "_tmp": tmp}
        log(f"[{graph}] engine {engines[graph]['bytes'] / (1 << 20):.1f} MiB in {engines[graph]['build_seconds']} s")

    if cache is not None and cache_path is not None:
        tmp_cache = cache_path.with_name(f".{cache_path.name}.{pid}.tmp")
        tmp_cache.write_bytes(memoryview(cache.serialize()))
        os.replace(tmp_cache, cache_path)

    # Engines first, the record last: a record on disk means a complete build.
    record_path = out / RECORD
    record_path.unlink(missing_ok=True)
    for graph, info in engines.items():
        os.replace(info.pop("_tmp"), out / info["path"])
    record = make_record(trt_version=trt.__version__, device=device, opts=opts, limits=limits,
                         manifest_sha=manifest_sha256(bundle.root), bundle_name=bundle.name,
                         profiles={g: profiles_to_json(p) for g, (_, p) in graphs.items()}, engines=engines,
                         precision=notes, build_seconds=time.monotonic() - started)
    tmp = out / f".{RECORD}.{pid}.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, record_path)
    log(f"wrote {out}/ ({', '.join(e['path'] for e in engines.values())}, {RECORD})")
    return record
