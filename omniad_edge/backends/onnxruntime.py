"""ONNX Runtime backend: vision + decoder sessions, IO binding into a host-managed KV cache.

Fused decoders (graphs.decoder.kv_layout "BNSH", export --target ort): each layer's cache buffer is bound whole as
both the past input and the present output, and GroupQueryAttention writes the new entries in place. Those binds
and the logits buffer are made once per cache; a step rebinds only its three small inputs, for any batch.

Plain decoders (kv_layout "BSHD": --target tensorrt and bundles exported before targets): every decode step binds
the valid past `cache[:, :P]` as the graph's past inputs and the cache slot `cache[:, P:P+S]` as the graph's
new_key/new_value outputs, so the graph writes straight into the cache; logits go to a buffer reused across steps.
For batch 1 (the common edge case) nothing is copied or allocated per step on the host; for batch > 1 the strided
past is gathered into a scratch buffer (BSHD keeps only batch 1 contiguous).
Binding is by address: per cache the base address of each buffer is computed once, and the binds go to the pybind
IOBinding with an OrtDevice built once (see `_binders`), which cuts the Python cost of a step's 4 x layers + 4 binds
several times over.

Threads: the sessions are shared (ONNX Runtime allows concurrent runs of one session); everything a run mutates,
the IO binding, the logits buffer and the buffer addresses, is kept per KV cache (`_CacheState`), so forwards on
different caches may run at once. A cache must not be used by two threads at once (the Generator checks its
working caches out of a pool).

Native decode step: on the CPU provider the decoder runs through ONNX Runtime's C API from the compiled module
(cpp_ext/src/ort_decoder.cpp; the library is the imported onnxruntime package's own, found at run time), and
`native_step(cache)` hands the Generator a step that binds, runs, samples and checks stop conditions without
Python. The KV binding is described per cache (`_kv_tensors`) from the bundle's kv_layout. The Python session
above stays the path for CUDA/TensorRT providers, for `native=False`, and when the C API cannot be loaded
(a build without it, an onnxruntime without the library): a warning names the reason.

Providers: CPU by default. "cuda" and "tensorrt" need onnxruntime-gpu; a requested provider that is missing or that
ONNX Runtime silently drops at session creation raises BackendError unless allow_fallback=True (then a warning is
logged and the effective provider is what `provider` reports). With CUDA/TensorRT the cache still lives on the host
(ONNX Runtime copies it per step); the TensorRT backend is the device-resident path.
"""
from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..contract import (DECODER_INPUTS, DRAFT_LOGITS, LOGITS, VISION_INPUTS, VISION_OUTPUT,  # noqa: F401
                        draft_problem, decoder_kv_layout, new_names, past_names, present_names)
from ..errors import BackendError
from . import KVCache

log = logging.getLogger("omniad_edge")

ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}
_OPT_LEVELS = ("disable", "basic", "extended", "all")
_EMBEDS, _POSITIONS, _MASK = DECODER_INPUTS


_FLOAT, _INT64 = 1, 7  # ONNX TensorProto element types
# IOBinding takes element types as ONNX type numbers (above) from 1.20 on; 1.19 refuses them ("Not a valid numpy
# type"). setup.py requires the same floor when it installs ONNX Runtime; a build found installed is checked here.
MIN_ONNXRUNTIME = (1, 20)


def check_version(version: str) -> None:
    """BackendError when `version` (onnxruntime.__version__) is older than MIN_ONNXRUNTIME."""
    parts = re.match(r"(\d+)\.(\d+)", str(version))
    if parts and (int(parts.group(1)), int(parts.group(2))) < MIN_ONNXRUNTIME:
        floor = ".".join(map(str, MIN_ONNXRUNTIME))
        raise BackendError(f"onnxruntime {version} is too old: omniad_edge needs >= {floor} (IOBinding with ONNX "
                           f"element types); pip install -U onnxruntime (or onnxruntime-gpu)")


def onnxruntime_packages(distributions=None) -> list[tuple[str, str]]:
    """(name, version) of each installed distribution providing the `onnxruntime` module: onnxruntime (CPU),
    onnxruntime-gpu (CUDA/TensorRT, also JetPack's wheels), onnxruntime-directml, ... They install the same module, so
    more than one means one build overwrote the other. `distributions` replaces importlib.metadata.distributions()."""
    import importlib.metadata

    found = set()
    for dist in importlib.metadata.distributions() if distributions is None else distributions:
        name = dist.metadata["Name"]
        top = (dist.read_text("top_level.txt") or "").split()
        if name and ("onnxruntime" in top or
                     (not top and any(str(f).startswith("onnxruntime/") for f in dist.files or ()))):
            found.add((re.sub(r"[-_.]+", "-", name).lower(), dist.version))
    return sorted(found)


def onnxruntime_build(ort, distributions=None) -> dict:
    """Which ONNX Runtime build is in use: package, version and the execution providers it offers."""
    found = onnxruntime_packages(distributions)
    providers = list(ort.get_available_providers())
    if len(found) > 1:
        log.warning("several ONNX Runtime builds are installed (%s) and share one `onnxruntime` module: the one "
                    "installed last is in use (providers %s). Keep one: pip uninstall -y %s, then install "
                    "onnxruntime (CPU) or onnxruntime-gpu", ", ".join(f"{n} {v}" for n, v in found), providers,
                    " ".join(n for n, _ in found))
    package = " + ".join(n for n, _ in found) or "onnxruntime (no package metadata)"
    return {"package": package, "version": ort.__version__, "providers": providers}


def _ort():
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendError(f"ONNX Runtime is not installed ({exc}): pip install onnxruntime for the CPU, or "
                           "onnxruntime-gpu for CUDA/TensorRT (on Jetson: NVIDIA's onnxruntime-gpu wheel for JetPack; "
                           "README, Quick start)") from None
    return onnxruntime


def resolve_providers(providers, *, available: Sequence[str], allow_fallback: bool, cache_dir=None,
                      fp16: bool = False, device_id: int = 0, package: str = "onnxruntime") -> list[tuple[str, dict]]:
    """Requested providers (short or full names, optionally (name, options) pairs) -> ORT provider list."""
    if providers is None:
        providers = ["cpu"]
    if isinstance(providers, (str, tuple)):
        providers = [providers]
    resolved: list[tuple[str, dict]] = []
    for item in providers:
        name, options = (item if isinstance(item, tuple) else (item, {}))
        if not isinstance(name, str):
            raise BackendError(f"providers: expected provider names like 'cpu', 'cuda', 'tensorrt', got {item!r}")
        full = ALIASES.get(name.lower(), name)
        options = dict(options)
        if full == "TensorrtExecutionProvider":
            options.setdefault("device_id", device_id)
            options.setdefault("trt_fp16_enable", bool(fp16))
            if cache_dir is not None:
                Path(cache_dir).mkdir(parents=True, exist_ok=True)
                options.setdefault("trt_engine_cache_enable", True)
                options.setdefault("trt_engine_cache_path", str(cache_dir))
        elif full == "CUDAExecutionProvider":
            options.setdefault("device_id", device_id)
        if full not in available:
            hint = ("check that the CUDA/cuDNN/TensorRT versions match this build" if "gpu" in package else
                    "CUDA/TensorRT need onnxruntime-gpu in its place")
            message = (f"execution provider {full} is not available in the installed {package} "
                       f"(available: {list(available)}); {hint}")
            if not allow_fallback:
                raise BackendError(message + ", or pass allow_fallback=True")
            log.warning("%s; falling back", message)
            continue
        resolved.append((full, options))
    if not resolved and not providers:
        raise BackendError("providers: no provider requested")
    if not resolved or resolved[-1][0] != "CPUExecutionProvider":
        # CPU last runs the nodes a GPU provider cannot take (node placement, not a fallback of the model).
        resolved.append(("CPUExecutionProvider", {}))
    return resolved


_OPT_CODES = {"disable": 0, "basic": 1, "extended": 2, "all": 99}  # ONNX Runtime's GraphOptimizationLevel


def onnxruntime_library(ort) -> list[Path]:
    """Candidate libraries of the imported onnxruntime package that export the C API (OrtGetApiBase): the wheel's
    capi/libonnxruntime.so.* (or .dylib), else its pybind module, which links the runtime statically in some builds."""
    capi = Path(ort.__file__).resolve().parent / "capi"
    found = []
    for pattern in ("libonnxruntime.so*", "libonnxruntime*.dylib", "onnxruntime_pybind11_state*"):
        found += sorted(p for p in capi.glob(pattern) if p.is_file() and "providers" not in p.name)
    return found


class _NativeState:
    """What forward keeps per KV cache on the native path: the compiled step bound to this cache's buffers."""

    def __init__(self, step):
        self.step = step
        self.logits = step.logits  # a view of the step's buffer, reused by every run on this cache


class _CacheState:
    """What forward keeps per KV cache: its IO binding with the binders, the logits buffer, buffer addresses."""

    def __init__(self, ort, session, fast: bool, batch: int, vocab_size: int):
        self.binding = session.io_binding()
        self.bind_input, self.bind_output, self.device = _binders(ort, self.binding, fast=fast)
        self.logits = np.empty((batch, vocab_size), np.float32)  # reused by every forward on this cache
        self.logits_address = self.logits.ctypes.data
        self.layout: list[tuple[str, str, int, int]] | None = None
        self.kv_bound = False  # fused decoders: cache buffers and logits bound for good


class OnnxRuntimeBackend:
    """Vision + decoder sessions. Safe to share between threads (`concurrent`); see the module docstring."""

    name = "onnxruntime"
    concurrent = True
    on_forward = None  # instrumentation hook (backends/__init__.py); the graph time is the session run

    def __init__(self, bundle, *, providers=None, threads: int | None = None, allow_fallback: bool = False,
                 optimization: str = "all", cache_dir: str | Path | None = None, fp16: bool = False,
                 device_id: int = 0, native: bool | None = None, spinning: bool = False):
        ort = _ort()
        check_version(ort.__version__)
        if threads is not None and (not isinstance(threads, int) or threads < 0):
            raise BackendError(f"threads must be a non-negative int (0 = onnxruntime's default), got {threads!r}")
        if not isinstance(spinning, bool):
            raise BackendError(f"spinning must be True or False, got {spinning!r}")
        if optimization not in _OPT_LEVELS:
            raise BackendError(f"optimization must be one of {list(_OPT_LEVELS)}, got {optimization!r}")
        self.bundle = bundle
        model = bundle.model
        self.num_layers = int(model["num_layers"])
        self.kv_heads = int(model["num_key_value_heads"])
        self.head_dim = int(model["head_dim"])
        self.hidden_size = int(model["hidden_size"])
        self.vocab_size = int(model["vocab_size"])
        self.kv_layout = decoder_kv_layout(bundle.manifest)
        self._kv_outputs = present_names if self.kv_layout == "BNSH" else new_names
        self.threads = threads
        self.runtime = onnxruntime_build(ort)
        self.requested = resolve_providers(providers, available=self.runtime["providers"],
                                           allow_fallback=allow_fallback, cache_dir=cache_dir, fp16=fp16,
                                           device_id=device_id, package=self.runtime["package"])
        self._allow_fallback = allow_fallback

        def options(mem_pattern: bool, spin: bool):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = int(threads or 0)
            opts.inter_op_num_threads = 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            opts.graph_optimization_level = {
                "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            }[optimization]
            opts.enable_mem_pattern = mem_pattern
            for key, value in spin_entries(spin).items():
                opts.add_session_config_entry(key, value)
            opts.log_severity_level = 3
            return opts

        # Spinning threads take the CPU from everything else in the process (sampler, preprocessing, the app) and
        # from other processes while a graph runs, so it is off unless asked for: on a quiet, dedicated machine it
        # makes the decoder's many small, back-to-back ops faster (docs/BENCHMARKS.md, "Thread spinning"). The
        # threads stop spinning when a run returns (force_spinning_stop), so they never spin on into what follows.
        # The vision graph never spins: it runs once a frame, after the station's idle gap, and there spinning made
        # it slower (benchmarks/results/vision-spinning.txt).
        self.spinning = spinning
        # ONNX Runtime keeps a memory pattern per input shape on top of its arena: for the vision graph (a new shape
        # per image size) that doubled the peak from the second call on
        # (benchmarks/results/vision-scaling-mem-pattern-on.md)
        self.vision = self._session(bundle.vision_path, "vision", options(mem_pattern=False, spin=False))
        self.session_options = options(mem_pattern=True, spin=spinning)  # the decoder's
        self.native = self._native_session(ort, native, threads, optimization)
        if self.native is None:
            self.decoder = self._session(bundle.decoder_path, "decoder")
            self.provider = self.decoder.get_providers()[0]
            io = ([i.name for i in self.decoder.get_inputs()], [o.name for o in self.decoder.get_outputs()])
        else:
            self.decoder = None
            self.provider = "CPUExecutionProvider"
            io = (self.native.inputs, self.native.outputs)
        if self.kv_layout == "BNSH" and self.provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
            log.warning("%s: this decoder's GroupQueryAttention is float32 and ONNX Runtime's CUDA kernels are "
                        "float16/bfloat16 only, so the attention runs on the CPU beside CUDA (correct, not fast): "
                        "for a CUDA station re-export with --target tensorrt (standard ops, all on the GPU)",
                        bundle.decoder_path.name)
        log.info("%s %s: decoder on %s (%s decode step), vision on %s", self.runtime["package"], ort.__version__,
                 self.provider, "native" if self.native is not None else "Python", self.vision.get_providers()[0])
        self._check_decoder_io(*io)
        # drafted tokens one run can check (0: the graph has no draft_logits output; an older export)
        self.draft_positions = int(bundle.graphs["decoder"].get("draft_logits", 0)) if DRAFT_LOGITS in io[1] else 0
        self._vision_inputs = [i.name for i in self.vision.get_inputs()]
        self._fast_binding = True  # False: bind through the public IOBinding methods (tests compare both)

    def _session(self, path: Path, what: str, options=None):
        ort = _ort()
        try:
            session = ort.InferenceSession(str(path), sess_options=options or self.session_options,
                                           providers=self.requested)
        except Exception as exc:  # onnxruntime raises its own exception types, not exported consistently
            raise self._load_error(exc, what, path) from None
        wanted = self.requested[0][0]
        got = session.get_providers()
        if wanted not in got:
            message = f"onnxruntime could not start {wanted} for the {what} graph (running on {got[0]})"
            if not self._allow_fallback:
                raise BackendError(message + "; pass allow_fallback=True to accept that")
            log.warning(message)
        return session

    def _load_error(self, exc: Exception, what: str, path: Path) -> BackendError:
        graph = self.bundle.graphs[what]
        missing = missing_contrib_ops(str(exc), graph.get("contrib_ops", ()))
        if missing:
            # MRotaryEmbedding (the decoder's rotary tables) arrived in ONNX Runtime 1.29; the rest in 1.20
            need = graph.get("min_onnxruntime", "1.20")
            older = (" --decoder-rotary computed (for onnxruntime >= 1.20) or" if "MRotaryEmbedding" in missing
                     else "")
            return BackendError(
                f"this ONNX Runtime build ({_ort().__version__}) lacks the contrib operator(s) {missing} that the "
                f"{what} graph {path.name} uses (the bundle was exported with --target ort): install the full "
                f"onnxruntime (or onnxruntime-gpu) >= {need}, or re-export the bundle with{older} --target tensorrt "
                "(standard ONNX ops only)")
        return BackendError(f"onnxruntime cannot load the {what} graph {path.name}: {exc}")

    def _native_session(self, ort, native: bool | None, threads: int | None, optimization: str):
        """The decoder session over the C API, or None (with the reason logged) where the Python one must run.
        native: None = when possible, True = required (BackendError otherwise), False = never."""
        if native is False:
            return None
        reason = None
        if [p for p, _ in self.requested] != ["CPUExecutionProvider"]:
            reason = f"providers {[p for p, _ in self.requested]} (the native step runs the CPU provider only)"
        elif self.kv_layout not in ("BSHD", "BNSH"):
            reason = f"kv_layout {self.kv_layout!r} has no native binding description"
        elif not hasattr(_native_module(), "OrtSession"):
            reason = "omniad_edge._native was built without it (rebuild: python setup.py build_ext --inplace)"
        else:
            libraries = onnxruntime_library(ort)
            errors = [] if libraries else [f"no library exporting the C API under {Path(ort.__file__).parent / 'capi'}"]
            for library in libraries:
                try:
                    return _native_module().OrtSession(str(library), str(self.bundle.decoder_path), int(threads or 0),
                                                       _OPT_CODES[optimization], True, self.spinning)
                except RuntimeError as exc:
                    if str(exc).startswith("loading "):  # the library works, the graph does not: no other one helps
                        raise self._load_error(exc, "decoder", self.bundle.decoder_path) from None
                    errors.append(str(exc))
            reason = "; ".join(errors)
        if native:
            raise BackendError(f"the native decode step is not available: {reason}")
        log.warning("native decode step not used (%s): the decode loop runs in Python", reason)
        return None

    def _check_decoder_io(self, input_names, output_names) -> None:
        inputs, outputs = set(input_names), set(output_names)
        need_in, need_out = set(DECODER_INPUTS), {LOGITS}
        for i in range(self.num_layers):
            need_in |= set(past_names(i))
            need_out |= set(self._kv_outputs(i))
        missing = sorted(need_in - inputs) + sorted(need_out - outputs)
        if missing:
            raise BackendError(f"decoder graph does not match the manifest ({self.num_layers} layers): "
                               f"missing {missing[:6]}{' ...' if len(missing) > 6 else ''}")
        extra = sorted(n for n in inputs if n.startswith("past_key.") and n not in need_in)
        if extra:
            raise BackendError(f"decoder graph has more layers than the manifest's num_layers={self.num_layers}: "
                               f"{extra[:3]}")

    # -- interface ---------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Drops the sessions (their memory goes with the last reference); the backend is unusable afterwards."""
        self.vision = self.decoder = self.native = None

    def encode_image(self, vision_inputs: dict) -> np.ndarray:
        if self.vision is None:
            raise BackendError("this onnxruntime backend is closed")
        missing = [n for n in self._vision_inputs if n not in vision_inputs]
        if missing:
            raise BackendError(f"vision inputs missing {missing}")
        feeds = {n: vision_inputs[n] for n in self._vision_inputs}
        return self.vision.run([VISION_OUTPUT], feeds)[0]

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        return KVCache(self.num_layers, batch, max_len, self.kv_heads, self.head_dim, layout=self.kv_layout)

    def forward(self, embeds: np.ndarray, position_ids: np.ndarray, attention_mask: np.ndarray, cache: KVCache,
                past_len: int, draft: np.ndarray | None = None) -> np.ndarray:
        """One decoder run -> the last position's logits (batch, vocab), a buffer reused by the cache's next run.
        draft: a (batch, S - 1, vocab) float32 array that receives the logits of the positions before the last
        (S <= draft_positions + 1), so that tokens drafted into this run can be checked."""
        hook = self.on_forward
        started = time.perf_counter() if hook is not None else 0.0
        b, s, _ = embeds.shape
        if past_len + s > cache.max_len:
            raise BackendError(f"KV cache full: {past_len} + {s} tokens > max_len {cache.max_len}")
        if b != cache.batch:
            raise BackendError(f"batch {b} does not match the cache's batch {cache.batch}")
        embeds = np.ascontiguousarray(embeds, dtype=np.float32)
        position_ids = np.ascontiguousarray(position_ids, dtype=np.int64)
        attention_mask = np.ascontiguousarray(attention_mask, dtype=np.int64)
        problem = None if draft is None else draft_problem(draft, b, s, self.draft_positions, self.vocab_size)
        if problem:
            raise BackendError(problem)
        decoder = self.decoder
        if decoder is None:  # the native session, or closed
            return self._forward_native(embeds, position_ids, attention_mask, cache, past_len, hook, started, draft)
        state = cache.backend_state
        if state is None:
            state = cache.backend_state = _CacheState(_ort(), decoder, self._fast_binding, b, self.vocab_size)
        logits, logits_address = state.logits, state.logits_address

        io = state.binding
        bind_in, bind_out, dev = state.bind_input, state.bind_output, state.device
        keep = [embeds, position_ids, attention_mask]  # arrays must outlive the run
        scratch = []  # (cache slot, graph output) pairs copied after the run
        if self.kv_layout != "BNSH":
            io.clear_binding_inputs()
            io.clear_binding_outputs()
        bind_in(_EMBEDS, dev, _FLOAT, list(embeds.shape), embeds.ctypes.data)
        bind_in(_POSITIONS, dev, _INT64, list(position_ids.shape), position_ids.ctypes.data)
        bind_in(_MASK, dev, _INT64, list(attention_mask.shape), attention_mask.ctypes.data)
        if self.kv_layout == "BNSH":
            if not state.kv_bound:  # the same buffers every step: bound once (binding a name again replaces it)
                shape = [b, self.kv_heads, cache.max_len, self.head_dim]
                for past_name, present_name, base, _ in self._layout(cache, state):
                    bind_in(past_name, dev, _FLOAT, shape, base)
                    bind_out(present_name, dev, _FLOAT, shape, base)
                bind_out(LOGITS, dev, _FLOAT, [b, self.vocab_size], logits_address)
                state.kv_bound = True
        else:
            self._bind_bshd(io, cache, state, b, s, past_len, keep, scratch)
        if draft is not None:
            bind_out(DRAFT_LOGITS, dev, _FLOAT, list(draft.shape), draft.ctypes.data)
        try:
            run_started = time.perf_counter() if hook is not None else 0.0
            decoder.run_with_iobinding(io)
            run_s = time.perf_counter() - run_started if hook is not None else 0.0
        except Exception as exc:
            raise BackendError(f"decoder run failed (batch {b}, {s} new tokens, past {past_len}): {exc}") from None
        finally:
            if draft is not None:  # bound for this run only (the BSHD path rebinds every output each run anyway)
                io.clear_binding_outputs()
                state.kv_bound = False
        for slot, out in scratch:
            slot[...] = out
        del keep
        if hook is not None:
            hook(s, time.perf_counter() - started, run_s)
        return logits

    def _bind_bshd(self, io, cache: KVCache, state: _CacheState, b: int, s: int, past_len: int, keep: list,
                   scratch: list) -> None:
        bind_in, bind_out, dev = state.bind_input, state.bind_output, state.device
        bind_out(LOGITS, dev, _FLOAT, [b, self.vocab_size], state.logits_address)
        if b == 1:
            # batch 1: past = cache[:, :P] and slot = cache[:, P:P+S] are contiguous; bind by address arithmetic
            past_shape = [1, past_len, self.kv_heads, self.head_dim]
            new_shape = [1, s, self.kv_heads, self.head_dim]
            for past_name, new_name, base, row_bytes in self._layout(cache, state):
                bind_in(past_name, dev, _FLOAT, past_shape, base)
                bind_out(new_name, dev, _FLOAT, new_shape, base + past_len * row_bytes)
            return
        # batch > 1: the strided past is gathered, the new entries land in scratch and are copied in after the run
        kv_shape = [b, s, self.kv_heads, self.head_dim]
        for i in range(self.num_layers):
            for past_name, new_name, buf in zip(past_names(i), new_names(i), (cache.keys[i], cache.values[i])):
                past = np.ascontiguousarray(buf[:, :past_len], dtype=np.float32)
                out = np.empty(kv_shape, np.float32)
                keep.append(past)
                scratch.append((buf[:, past_len:past_len + s], out))
                bind_in(past_name, dev, _FLOAT, list(past.shape), past.ctypes.data)
                bind_out(new_name, dev, _FLOAT, kv_shape, out.ctypes.data)

    def native_step(self, cache: KVCache):
        """The compiled decode step bound to this cache (None on the Python path): the Generator feeds tokens and
        runs the token loop through it (`feed`, `loop`; cpp_ext/python/bind_decoder.cpp)."""
        if self.native is None:
            return None
        state = cache.backend_state
        if state is None:
            state = cache.backend_state = _NativeState(self._new_step(cache))
        return state.step

    def _new_step(self, cache: KVCache):
        names = [*DECODER_INPUTS, LOGITS] + ([DRAFT_LOGITS] if self.draft_positions else [])
        return _native_module().DecodeStep(self.native, cache.batch, self.vocab_size, cache.max_len,
                                           self._kv_tensors(cache), names)

    def _kv_tensors(self, cache: KVCache) -> list[tuple]:
        """The binding description of a cache's buffers for the native step, per tensor: (name, is output, dims,
        buffer address, bytes between batch rows, bytes per slot, starts at the past length). Dims are constants or
        the step's sizes (-1 batch, -2 past, -3 new tokens, -4 past + new; ort_decoder.hpp).
        BSHD: past_* are slots [0, P) of each row, new_* the S slots from P. BNSH: past_* and present_* are both the
        whole buffer (B, KV, max_len, hd) at one address; the graph updates it in place."""
        batch, past, new = -1, -2, -3
        if getattr(cache, "layout", "BSHD") != self.kv_layout:
            raise BackendError(f"KV cache layout {getattr(cache, 'layout', 'BSHD')} does not match the decoder "
                               f"graph's {self.kv_layout}: use this backend's new_cache()")
        tensors = []
        for i in range(self.num_layers):
            for past_name, out_name, buf in zip(past_names(i), self._kv_outputs(i), (cache.keys[i], cache.values[i])):
                if buf.dtype != np.float32 or not buf.flags.c_contiguous:
                    raise BackendError(f"KV cache buffers must be C-contiguous float32, got {buf.dtype}")
                address, rows, slot = buf.ctypes.data, buf.strides[0], buf.strides[1]
                if self.kv_layout == "BNSH":
                    whole = [batch, self.kv_heads, cache.max_len, self.head_dim]
                    tensors.append((past_name, False, whole, address, rows, 0, False))
                    tensors.append((out_name, True, whole, address, rows, 0, False))
                else:
                    dims = [self.kv_heads, self.head_dim]
                    tensors.append((past_name, False, [batch, past, *dims], address, rows, slot, False))
                    tensors.append((out_name, True, [batch, new, *dims], address, rows, slot, True))
        return tensors

    def _forward_native(self, embeds, position_ids, attention_mask, cache, past_len, hook, started, draft=None):
        if self.native is None:
            raise BackendError("this onnxruntime backend is closed")
        step = self.native_step(cache)
        b, s, _ = embeds.shape
        try:
            step.run(embeds, position_ids, attention_mask, past_len, draft)
        except (RuntimeError, ValueError) as exc:
            raise BackendError(f"decoder run failed (batch {b}, {s} new tokens, past {past_len}): {exc}") from None
        if hook is not None:
            hook(s, time.perf_counter() - started, step.last_run_ns * 1e-9)
        return cache.backend_state.logits

    def _layout(self, cache: KVCache, state: _CacheState) -> list[tuple[str, str, int, int]]:
        """Per cache buffer: (past input name, new/present output name, base address, bytes per slot (BSHD)).
        Computed once per cache: its buffers are allocated once and never replaced."""
        layout = state.layout
        if layout is None:
            if getattr(cache, "layout", "BSHD") != self.kv_layout:
                raise BackendError(f"KV cache layout {getattr(cache, 'layout', 'BSHD')} does not match the decoder "
                                   f"graph's {self.kv_layout}: use this backend's new_cache()")
            layout = []
            for i in range(self.num_layers):
                for past_name, out_name, buf in zip(past_names(i), self._kv_outputs(i),
                                                    (cache.keys[i], cache.values[i])):
                    if buf.dtype != np.float32 or not buf.flags.c_contiguous:
                        raise BackendError(f"KV cache buffers must be C-contiguous float32, got {buf.dtype}")
                    layout.append((past_name, out_name, buf.ctypes.data, buf.strides[1]))
            state.layout = layout
        return layout

    def describe(self) -> dict:
        return {"backend": self.name, "provider": self.provider, "threads": self.threads,
                "decode_step": "Python" if self.native is None else "native",
                "providers": [p for p, _ in self.requested], "onnxruntime": self.runtime}


def _binders(ort, io, fast: bool = True):
    """(bind_input, bind_output, device) for one IOBinding; both take (name, device, onnx type, shape, address).

    The public IOBinding.bind_input/bind_output build an OrtDevice on every call (~3-6 us each, 4 per layer per
    token); the pybind object under them takes a device built once. That object is private to onnxruntime, so it is
    tried once here (a throwaway bind) and any change to it falls back to the public methods (same results)."""
    if fast:
        try:
            raw = io._iobinding
            device = ort.OrtDevice.make("cpu", 0)._get_c_device()
            probe = np.zeros(1, np.int64)
            raw.bind_input(_MASK, device, _INT64, [1, 1], probe.ctypes.data)
            io.clear_binding_inputs()
            return raw.bind_input, raw.bind_output, device
        except Exception as exc:  # whatever the private layer raises now: use the public one
            log.debug("onnxruntime IOBinding internals changed (%s); binding through the public API", exc)

    def bind_input(name, device, element_type, shape, address):
        io.bind_input(name, "cpu", 0, element_type, shape, address)

    def bind_output(name, device, element_type, shape, address):
        io.bind_output(name, "cpu", 0, element_type, shape, address)

    return bind_input, bind_output, None


def spin_entries(spin: bool) -> dict[str, str]:
    """ONNX Runtime session config entries for thread spinning: with it on, the intra-op threads spin between the ops
    of a run and stop when the run returns (the native session sets the same, cpp_ext/src/ort_decoder.cpp)."""
    return {"session.intra_op.allow_spinning": "1" if spin else "0", "session.inter_op.allow_spinning": "0",
            "session.force_spinning_stop": "1" if spin else "0"}


def missing_contrib_ops(error: str, ops) -> list[str]:
    """The contrib ops named in an ONNX Runtime load error that says an op is unknown (a build without them)."""
    if not re.search(r"not a registered function/op|Could not find an implementation|No opset import for domain",
                     error):
        return []
    named = [op for op in ops if op in error]
    return named or (list(ops) if "com.microsoft" in error else [])


def _native_module():
    from .. import _native

    return _native


def default_threads() -> int:
    """A conservative default for shared small CPUs: all cores but never more than 4."""
    return max(1, min(4, os.cpu_count() or 1))
