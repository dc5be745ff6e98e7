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
from .cuda import DeviceInfo, import_tensorrt, tensorrt_step
from .limits import (BuildOptions, Profile, decoder_profiles, profiles_to_json, resolve_limits, vision_profile,
                     vision_tail_blocks)
from .memory import check_memory, estimate_memory
from .precision import (LayerInfo, check_bundle_precision, check_precision, check_quantization, graph_precision,
                        graph_precisions, norm_fp32_layers, rotary_fp32_layers, strongly_typed, vision_fp32_layers)
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
        # get_layer returns the ILayer base (no to_type without a downcast); the output carries the quantised type
        if fp8_type is not None and layer.get_output(0).dtype == fp8_type:
            fp8 += 1
        else:
            int8 += 1
    return int8, fp8


def _layer_infos(trt, network) -> list[LayerInfo]:
    floats = {trt.DataType.FLOAT, getattr(trt.DataType, "HALF", trt.DataType.FLOAT)}
    infos = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        ins = [layer.get_input(k) for k in range(layer.num_inputs)]
        outs = [layer.get_output(k) for k in range(layer.num_outputs)]
        infos.append(LayerInfo(name=layer.name, kind=layer.type.name,
                               inputs=tuple(t.name for t in ins if t is not None),
                               outputs=tuple(t.name for t in outs if t is not None),
                               float_output=all(t.dtype in floats for t in outs if t is not None)))
    return infos


def _build_one(trt, builder, logger, *, graph: str, onnx_path: Path, profiles: list[Profile], opts: BuildOptions,
               strong: bool, timing_cache, manifest: dict, log: Callable[[str], None]):
    """Parse one ONNX graph and build its serialized engine; returns (bytes-like, precision notes)."""
    with tensorrt_step(graph, "create the network"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strong else 0
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
    log(f"[{graph}] parsing {onnx_path.name}")
    with tensorrt_step(graph, f"parse {onnx_path.name}"):
        parsed = parser.parse_from_file(str(onnx_path))
    if not parsed:
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

    notes: dict[str, Any] = {f"{graph}_strongly_typed": strong}
    with tensorrt_step(graph, "configure the build"):
        config = builder.create_builder_config()
        if opts.workspace_gb:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_gb * (1 << 30)))
        if not opts.tf32:
            config.clear_flag(trt.BuilderFlag.TF32)  # keep fp32 builds at fp32 accuracy, matching ONNX Runtime
        if not strong:  # TensorRT 10 only (check_precision refuses weak typing on 11)
            for wanted, flag in ((opts.fp16, "FP16"), (opts.int8, "INT8"), (opts.fp8, "FP8")):
                if wanted:
                    config.set_flag(getattr(trt.BuilderFlag, flag))
            if opts.fp16:
                notes[f"{graph}_fp32_layers"] = _pin_fp32(trt, network, config, graph, manifest, opts, log)
        if timing_cache is not None:
            config.set_timing_cache(timing_cache, False)
        monitor = _progress_monitor(trt, log, graph)
        if monitor is not None:
            config.progress_monitor = monitor
    for k, profile in enumerate(profiles):
        with tensorrt_step(graph, f"create optimization profile {k}"):
            trt_profile = builder.create_optimization_profile()
        for name, (low, opt, high) in profile.items():
            with tensorrt_step(graph, f"set optimization profile {k} for {name} ({low} / {opt} / {high})"):
                trt_profile.set_shape(name, low, opt, high)
        with tensorrt_step(graph, f"add optimization profile {k}"):
            index = config.add_optimization_profile(trt_profile)
        if index < 0:
            raise BackendError(f"the {graph} engine: TensorRT rejected optimization profile {k} "
                               "(add_optimization_profile returned -1)")

    log(f"[{graph}] building engine (this takes minutes; progress follows)")
    with tensorrt_step(graph, "build"):
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"the {graph} engine: TensorRT could not build it (see its log above)")
    return serialized, notes


def _pin_fp32(trt, network, config, graph: str, manifest: dict, opts: BuildOptions, log) -> dict | str:
    """Weak typing lets TensorRT run any layer in fp16; keep fp32 where fp16 is known to break the model: the rotary
    angles and the norms of every graph, and the last vision blocks' MLP (Qwen2.5-VL-3B overflows there). Returns
    what was pinned, for build.json; "all" when the vision MLPs cannot be found and the tower stays fp32."""
    layers = _layer_infos(trt, network)
    picked = {"rotary": rotary_fp32_layers(layers), "norms": norm_fp32_layers(layers)}
    record: dict[str, Any] = {}
    if graph == "vision":
        depth = int(manifest["model"]["vision"].get("depth", 0))
        tail = vision_tail_blocks(manifest, opts)
        mlp, blocks = vision_fp32_layers(layers, depth, tail)
        if len(blocks) < tail:
            log(f"[vision] the MLP weights of the last {tail} blocks were not all found (found blocks {blocks}); "
                "keeping the vision engine fp32 (export an fp16 bundle to get fp16 with fp32 islands)")
            config.clear_flag(trt.BuilderFlag.FP16)
            return "all"
        picked["mlp"] = mlp
        record["mlp_blocks"] = blocks
    indices = sorted(set().union(*picked.values()))
    with tensorrt_step(graph, "pin layers to fp32"):
        for i in indices:
            layer = network.get_layer(i)
            layer.precision = trt.float32
            for k in range(layer.num_outputs):
                layer.set_output_type(k, trt.float32)
        if indices:
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    counts = {kind: len(found) for kind, found in picked.items()}
    log(f"[{graph}] {len(indices)} layers pinned to fp32 ({', '.join(f'{k} {v}' for k, v in counts.items())})")
    record.update(counts=counts, layers=[layers[i].name for i in indices])
    return record


def _timing_cache(builder, path: Path, log):
    """The timing cache from `path`, or a new one when the file is absent, corrupt or from another TensorRT/device
    (a cache only speeds builds up: a bad one is replaced, never fatal)."""
    probe = builder.create_builder_config()
    data = path.read_bytes() if path.is_file() else b""
    if data:
        try:
            cache = probe.create_timing_cache(data)
        except RuntimeError:
            cache = None
        if cache is None:
            log(f"timing cache {path} cannot be read (corrupt or not a TensorRT timing cache); starting a new one")
        elif not probe.set_timing_cache(cache, False):
            log(f"timing cache {path} is from another device or TensorRT version; starting a new one")
        else:
            log(f"timing cache {path} (loaded)")
            return cache
    else:
        log(f"timing cache {path} (new)")
    with tensorrt_step(None, "create a timing cache"):
        cache = probe.create_timing_cache(b"")
    if cache is None:
        raise BackendError("TensorRT could not create an empty timing cache")
    return cache


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
        "strongly_typed": {g: strongly_typed(opts, p) for g, p in graph_precisions(manifest).items()},
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
    check_precision(opts, device, trt.__version__, graph_precisions(manifest))
    estimate = estimate_memory(manifest, limits, fp16=opts.fp16, integrated=device.integrated, root=bundle.root)
    log(f"device {device.name} (compute capability {device.compute_capability[0]}.{device.compute_capability[1]}), "
        f"TensorRT {trt.__version__}; runtime memory estimate {estimate.describe()}")
    if not opts.skip_memory_check:
        check_memory(estimate, device)

    out = bundle.root / ENGINE_DIR
    out.mkdir(exist_ok=True)
    with tensorrt_step(None, "create the builder"):
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
    cache_path = Path(opts.timing_cache) if opts.timing_cache else None
    cache = _timing_cache(builder, cache_path, log) if cache_path is not None else None

    graphs = {"vision": (bundle.vision_path, [vision_profile(manifest, limits)]),
              "decoder": (bundle.decoder_path, decoder_profiles(manifest, limits))}
    engines, notes = {}, {}
    pid = os.getpid()
    for graph, (onnx_path, profiles) in graphs.items():
        t0 = time.monotonic()
        strong = strongly_typed(opts, graph_precision(manifest, graph), trt.__version__)
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
        with tensorrt_step(None, "serialize the timing cache"):
            data = cache.serialize()
        tmp_cache.write_bytes(memoryview(data))
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
