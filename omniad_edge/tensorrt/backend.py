"""TensorRT backend: the bundle's engines (built by `omniad-edge build-engine`) behind the backend interface of
omniad_edge/backends/__init__.py, with device-resident buffers and KV cache.

Everything is allocated once, at load, from the limits in the build record: device input/output buffers, pinned
host staging buffers, and one KV cache slot per live cache (a slot is reused when its cache object is dropped).
Tensors are bound by name; all copies and executions are asynchronous on one CUDA stream, synchronised once per
call when the logits come back.

KV binding (see plan_step): for batch 1 the graph reads the valid past `cache[:, :P]` and writes its new keys
straight into the next slots when that address is 256-byte aligned, as TensorRT requires of every tensor address
(always, for rows of 256 bytes or more: Qwen2.5-VL-3B/7B); otherwise into a scratch buffer. Batches (whose BSHD
past is strided) and CUDA-graph decode bind the whole cache with unused slots masked off, so shapes and addresses
stay fixed; the new keys then go to a scratch buffer and one strided copy per layer moves them into the cache.
Every buffer is its own cudaMalloc allocation, so every other bound address is aligned too.

tensorrt and the CUDA runtime are loaded lazily (cuda.py).
"""
from __future__ import annotations

import ctypes
import logging
import mmap
import time
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..bundle import sha256_file
from ..contract import (DECODER_INPUTS, DRAFT_LOGITS, LOGITS, VISION_INPUTS, VISION_OUTPUT, draft_problem,
                        new_names, past_names, vision_input_names)
from ..errors import BackendError
from .cuda import D2D, D2H, H2D, import_tensorrt, load_cuda, tensorrt_step
from .limits import (ALIGNMENT, Limits, decoder_input_names, decoder_output_names, io_buffer_plan, kv_row_bytes,
                     kv_scratch_seq, merge_unit)
from .precision import check_bundle_target
from .record import ENGINE_DIR, check_record, manifest_sha256, read_record, record_limits

log = logging.getLogger("omniad_edge")
_PIXELS = VISION_INPUTS[0]
_EMBEDS, _POSITIONS, _MASK = DECODER_INPUTS

__all__ = ["TensorRTBackend", "DeviceKVCache", "create_backend", "plan_step", "StepPlan", "expand_mask"]

# ---------------------------------------------------------------------------------------------------------------
# Step planning (pure)

@dataclass(frozen=True)
class StepPlan:
    past_bound: int  # the past length the engine sees (P exactly, 0, or the cache capacity)
    mask_len: int  # attention_mask columns the engine sees: past_bound + seq
    direct: bool  # new K/V written straight into the cache slots (else: scratch + strided copy)


def plan_step(*, batch: int, seq: int, past_len: int, capacity: int, graph: bool = False,
              row_bytes: int = ALIGNMENT) -> StepPlan:
    """How one forward binds the KV cache (`row_bytes`: bytes of one cache position).

    Batch 1 without a CUDA graph: exact past, new K/V straight into the cache (zero copies) where the slot address
    is 256-byte aligned, else into scratch. Otherwise the past is the whole (strided) cache with unused slots masked,
    which keeps addresses and shapes fixed; an empty past stays empty, since a fresh prefill needs no masking.
    """
    if past_len + seq > capacity:
        raise BackendError(f"sequence of {past_len + seq} tokens exceeds the max_seq_len {capacity} the engines were "
                           "built for; rebuild with a larger --max-seq-len")
    if batch == 1 and not graph:
        aligned = past_len * row_bytes % ALIGNMENT == 0
        return StepPlan(past_bound=past_len, mask_len=past_len + seq, direct=aligned)
    bound = capacity if graph or past_len else 0  # a captured graph needs the same shapes at every step
    return StepPlan(past_bound=bound, mask_len=bound + seq, direct=False)


def expand_mask(attention_mask: np.ndarray, plan: StepPlan, past_len: int) -> np.ndarray:
    """The caller's (B, P+S) mask laid out for the bound past: valid past slots, zeros for unused, then the new."""
    if plan.past_bound == past_len:
        return attention_mask
    b = attention_mask.shape[0]
    out = np.zeros((b, plan.mask_len), np.int64)
    out[:, :past_len] = attention_mask[:, :past_len]
    out[:, plan.past_bound:] = attention_mask[:, past_len:]
    return out


# ---------------------------------------------------------------------------------------------------------------
# Device KV cache

class DeviceKVCache:
    """A KV cache living in one device slot: per layer a (batch_max, max_seq_len, kv_heads, head_dim) float32
    buffer for keys and one for values; this cache uses the first `batch` rows and `max_len` slots."""

    def __init__(self, backend: "TensorRTBackend", slot: int, batch: int, max_len: int):
        self._backend = backend
        self.slot = slot
        self.batch, self.max_len = batch, max_len
        self.keys = backend._slots[slot]["keys"]  # device pointers, one per layer
        self.values = backend._slots[slot]["values"]
        weakref.finalize(self, backend._release_slot, slot)

    @property
    def num_layers(self) -> int:
        return len(self.keys)

    def copy_prefix(self, source: "DeviceKVCache", length: int, source_row: int = 0) -> None:
        """Copy slots [0, length) of one row of `source` into every row of this cache (device to device)."""
        if not isinstance(source, DeviceKVCache) or source._backend is not self._backend:
            raise BackendError("copy_prefix: source must be a cache of the same TensorRT backend")
        if length > self.max_len or length > source.max_len:
            raise ValueError(f"prefix of {length} slots does not fit (max_len {self.max_len}/{source.max_len})")
        if not 0 <= source_row < source.batch:
            raise ValueError(f"source_row must be in [0, {source.batch}), got {source_row}")
        self._backend._copy_prefix(self, source, length, source_row)


# ---------------------------------------------------------------------------------------------------------------
# The backend

class _Buffer:
    """A device buffer with a pinned host twin of the same size."""

    def __init__(self, cuda, nbytes: int, host: bool = True):
        self.nbytes = int(nbytes)
        self.device = cuda.malloc(self.nbytes)
        self.host_ptr = cuda.host_alloc(self.nbytes) if host else 0

    def host(self, shape, dtype) -> np.ndarray:
        count = int(np.prod(shape)) * np.dtype(dtype).itemsize
        raw = (ctypes.c_char * count).from_address(self.host_ptr)
        return np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape))).reshape(shape)


class TensorRTBackend:
    """Backend "tensorrt": engines from BUNDLE/tensorrt, checked against this device and TensorRT version.

    Options: device (CUDA index), cuda_graph (capture the decode step; batch 1 and batches alike), verify (sha256 of
    the engine files against the build record). threads/optimization/allow_fallback are ONNX Runtime settings the
    Inspector passes to every backend; they change nothing here. `providers` belongs to the onnxruntime backend
    (its "tensorrt" provider is ONNX Runtime's TensorRT execution provider, a different path) and is refused.
    `_trt`/`_cuda` replace the tensorrt module and the CUDA wrapper (tests inject fakes).
    """

    name = "tensorrt"
    on_forward = None  # instrumentation hook (backends/__init__.py); the run is asynchronous, so graph = forward

    def __init__(self, bundle, *, device: int = 0, cuda_graph: bool = False, verify: bool = True, providers=None,
                 threads: int | None = None, allow_fallback: bool = False, optimization: str | None = None,
                 _trt=None, _cuda=None):
        from ..bundle import load_bundle

        if providers is not None:
            raise BackendError(f"providers={providers!r} selects ONNX Runtime execution providers; the tensorrt "
                               "backend runs its own engines (use backend='onnxruntime' with providers, or drop "
                               "providers)")
        if not isinstance(device, int) or isinstance(device, bool) or device < 0:
            raise BackendError(f"device must be a CUDA device index >= 0, got {device!r}")
        self.bundle = bundle = load_bundle(bundle)
        check_bundle_target(bundle.manifest)  # before anything else: engines of an ort bundle cannot exist
        self.root = Path(bundle.root)
        if _trt is None:
            _trt = import_tensorrt()
        self._trt = trt = _trt
        self._cuda = cuda = _cuda or load_cuda()
        self.device_info = cuda.device_info(device)
        self.record = record = read_record(self.root)
        check_record(record, trt_version=trt.__version__, device=self.device_info,
                     manifest_sha=manifest_sha256(self.root), root=self.root)
        self.limits: Limits = record_limits(record)

        model = bundle.model
        self.num_layers = int(model["num_layers"])
        self.kv_heads, self.head_dim = int(model["num_key_value_heads"]), int(model["head_dim"])
        self.hidden_size, self.vocab_size = int(model["hidden_size"]), int(model["vocab_size"])
        self.out_hidden = int(model["vision"].get("out_hidden_size", self.hidden_size))
        self.unit = merge_unit(bundle.manifest)
        self._vision_names = vision_input_names(bundle.manifest)
        self.cuda_graph = bool(cuda_graph)
        self._row = kv_row_bytes(bundle.manifest)  # bytes of one cache position
        self._allocations: list[int] = []
        self._host_allocations: list[int] = []
        self._graphs: dict[tuple[int, int], int] = {}

        with tensorrt_step(None, "create the runtime"):
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
        self.vision_engine = self._load_engine("vision", verify)
        self.decoder_engine = self._load_engine("decoder", verify)
        self._check_io()
        self.stream = cuda.stream_create()
        self._vision_ctx = self._context("vision", self.vision_engine, 0)
        self._prefill_ctx = self._context("decoder", self.decoder_engine, 0)
        self._decode_ctx = self._context("decoder", self.decoder_engine, 1)
        self._allocate()
        # drafted tokens one run can check (speculative decoding; 0: the bundle's decoder has no draft_logits)
        self.draft_positions = int(bundle.graphs["decoder"].get("draft_logits", 0))
        self._slots: list[dict] = []
        self._free_slots: list[int] = []
        free, total = cuda.mem_get_info()
        self.provider = f"TensorRT {trt.__version__} on {self.device_info.name}"
        log.info("tensorrt backend: %s, %.1f MiB device memory in use by this backend, %.1f MiB free",
                 self.provider, self.device_memory_bytes / 2**20, free / 2**20)

    # -- loading -----------------------------------------------------------------------------------------------
    def _load_engine(self, graph: str, verify: bool):
        info = self.record["engines"][graph]
        path = self.root / ENGINE_DIR / info["path"]
        rebuild = f"rebuild with: omniad-edge build-engine {self.root}"
        if not path.is_file():
            raise BackendError(f"TensorRT {graph} engine {path} is missing; {rebuild}")
        if verify and sha256_file(path) != info.get("sha256"):
            raise BackendError(f"TensorRT {graph} engine {path} does not match its build record (sha256); {rebuild}")
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data, \
                tensorrt_step(graph, f"load {path}"):
            engine = self._runtime.deserialize_cuda_engine(data)  # mmap: no second copy of a GB-sized engine
        if engine is None:
            raise BackendError(f"TensorRT could not load the {graph} engine {path} (see the log above); {rebuild}")
        return engine

    def _check_io(self) -> None:
        trt = self._trt
        want = {
            "vision": {**{n: np.float32 if n == _PIXELS else np.int64 for n in self._vision_names},
                       VISION_OUTPUT: np.float32},
            "decoder": {n: np.int64 if n in (_POSITIONS, _MASK) else np.float32  # embeds, K/V and logits: float32
                        for n in [*decoder_input_names(self.bundle.manifest),
                                  *decoder_output_names(self.bundle.manifest)]},
        }
        for graph, engine in (("vision", self.vision_engine), ("decoder", self.decoder_engine)):
            names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
            expected = want[graph]
            if names != set(expected):
                missing, extra = sorted(set(expected) - names)[:6], sorted(names - set(expected))[:6]
                raise BackendError(f"the {graph} engine's tensors do not match the bundle: missing {missing}, "
                                   f"unexpected {extra}; rebuild the engines")
            for name, dtype in expected.items():
                got = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
                if got != np.dtype(dtype):
                    raise BackendError(f"{graph} engine tensor {name} is {got}, the graph contract says "
                                       f"{np.dtype(dtype)}; rebuild the engines")
        if self.decoder_engine.num_optimization_profiles < 2:
            raise BackendError("the decoder engine lacks its decode profile; rebuild with omniad-edge build-engine")

    def _context(self, graph: str, engine, profile: int):
        trt = self._trt
        strategy = getattr(getattr(trt, "ExecutionContextAllocationStrategy", None), "ON_PROFILE_CHANGE", None)
        # ON_PROFILE_CHANGE: the decode context holds only what the single-token profile needs.
        with tensorrt_step(graph, "create an execution context"):
            context = engine.create_execution_context(strategy) if strategy is not None else \
                engine.create_execution_context()
        if context is None:
            raise BackendError(f"the {graph} engine: TensorRT could not create an execution context (out of device "
                               "memory?)")
        if profile:
            with tensorrt_step(graph, f"select optimization profile {profile}"):
                ok = context.set_optimization_profile_async(profile, self.stream)
            if not ok:
                raise BackendError(f"the {graph} engine: TensorRT refused optimization profile {profile}")
        return context

    def _alloc(self, nbytes: int, host: bool = True) -> _Buffer:
        buf = _Buffer(self._cuda, nbytes, host)
        self._allocations.append(buf.device)
        if host:
            self._host_allocations.append(buf.host_ptr)
        return buf

    def _allocate(self) -> None:
        """Every I/O buffer at the build limits, once (sizes from the same plan the build estimate uses)."""
        lim = self.limits
        plan = io_buffer_plan(self.bundle.manifest, lim)
        self._vision = {n: self._alloc(plan[f"vision.{n}"]) for n in self._vision_names}
        self._vision_out = self._alloc(plan[f"vision.{VISION_OUTPUT}"])
        b, s = lim.batch, lim.max_prefill
        self._embeds = self._alloc(plan[f"decoder.{_EMBEDS}"])
        self._positions = self._alloc(plan[f"decoder.{_POSITIONS}"])
        self._mask = self._alloc(plan[f"decoder.{_MASK}"])
        self._logits = self._alloc(plan[f"decoder.{LOGITS}"])
        drafts = plan.get(f"decoder.{DRAFT_LOGITS}")
        self._draft = self._alloc(drafts) if drafts else None
        # New K/V for batches, unaligned slots and graph decode: (B, S, kv_heads, head_dim) per layer and kind.
        scratch_seq = kv_scratch_seq(self.bundle.manifest, lim, self.cuda_graph)
        self._scratch = [self._alloc(b * scratch_seq * self._row, host=False).device
                         for _ in range(2 * self.num_layers)] if scratch_seq else []
        self._scratch_seq = scratch_seq

    # -- KV cache slots ----------------------------------------------------------------------------------------
    def new_cache(self, batch: int, max_len: int) -> DeviceKVCache:
        lim = self.limits
        if not isinstance(batch, int) or not 1 <= batch <= lim.batch:
            raise BackendError(f"batch must be in [1, {lim.batch}] (the engines' --batch), got {batch!r}")
        if not isinstance(max_len, int) or not 1 <= max_len <= lim.max_seq_len:
            raise BackendError(f"max_len must be in [1, {lim.max_seq_len}] (the engines' --max-seq-len), got "
                               f"{max_len!r}")
        if self._free_slots:
            slot = self._free_slots.pop()
        else:  # a new slot is allocated once and reused after its cache is dropped
            nbytes = lim.batch * lim.max_seq_len * self._row
            keys, values = [], []
            for target in (keys, values):
                for _ in range(self.num_layers):
                    ptr = self._alloc(nbytes, host=False).device
                    self._cuda.memset_async(ptr, 0, nbytes, self.stream)  # masked slots must hold finite values
                    target.append(ptr)
            self._slots.append({"keys": keys, "values": values, "bytes": 2 * self.num_layers * nbytes})
            slot = len(self._slots) - 1
        return DeviceKVCache(self, slot, batch, max_len)

    def _release_slot(self, slot: int) -> None:
        self._free_slots.append(slot)

    def _copy_prefix(self, dst: DeviceKVCache, src: DeviceKVCache, length: int, row: int) -> None:
        pitch = self.limits.max_seq_len * self._row
        for d_ptr, s_ptr in zip(dst.keys + dst.values, src.keys + src.values):
            for b in range(dst.batch):
                self._cuda.memcpy_async(d_ptr + b * pitch, s_ptr + row * pitch, length * self._row, D2D,
                                        self.stream)

    # -- interface ---------------------------------------------------------------------------------------------
    def encode_image(self, vision_inputs: dict) -> np.ndarray:
        missing = [n for n in self._vision_names if n not in vision_inputs]
        if missing:
            raise BackendError(f"vision inputs missing {missing}")
        arrays = {n: np.ascontiguousarray(vision_inputs[n], np.float32 if n == _PIXELS else np.int64)
                  for n in self._vision_names}
        n = arrays[_PIXELS].shape[0]
        n_max = self.unit * self.limits.max_image_tokens * self.limits.max_images
        if n > n_max or n % self.unit:
            raise BackendError(f"vision call of {n} patches: the engine takes multiples of {self.unit} up to {n_max} "
                               "(--max-image-tokens x --max-images at build time)")
        ctx, cuda, stream = self._vision_ctx, self._cuda, self.stream
        for name, array in arrays.items():
            buf = self._vision[name]
            staging = buf.host(array.shape, array.dtype)
            np.copyto(staging, array)
            cuda.memcpy_async(buf.device, buf.host_ptr, array.nbytes, H2D, stream)
            self._set(ctx, "vision", name, array.shape, buf.device)
        out_shape = (n // self.unit, self.out_hidden)
        self._address(ctx, "vision", VISION_OUTPUT, self._vision_out.device)
        self._execute(ctx, "vision")
        result = self._vision_out.host(out_shape, np.float32)
        cuda.memcpy_async(self._vision_out.host_ptr, self._vision_out.device, result.nbytes, D2H, stream)
        cuda.stream_synchronize(stream)
        return result.copy()  # the caller keeps image embeddings across calls

    def forward(self, embeds: np.ndarray, position_ids: np.ndarray, attention_mask: np.ndarray,
                cache: DeviceKVCache, past_len: int, draft: np.ndarray | None = None) -> np.ndarray:
        hook = self.on_forward
        started = time.perf_counter() if hook is not None else 0.0
        if not isinstance(cache, DeviceKVCache) or cache._backend is not self:
            raise BackendError("cache must come from this backend's new_cache()")
        b, s, hidden = embeds.shape
        if b != cache.batch:
            raise BackendError(f"batch {b} does not match the cache's batch {cache.batch}")
        if hidden != self.hidden_size:
            raise BackendError(f"embeds hidden size {hidden} != the model's {self.hidden_size}")
        if past_len + s > cache.max_len:
            raise BackendError(f"KV cache full: {past_len} + {s} tokens > max_len {cache.max_len}")
        if s > self.limits.max_prefill:
            raise BackendError(f"{s} tokens in one forward exceed the engines' --max-prefill {self.limits.max_prefill}")
        if position_ids.shape != (3, b, s) or attention_mask.shape != (b, past_len + s):
            raise BackendError(f"position_ids must be (3, {b}, {s}) and attention_mask ({b}, {past_len + s}); got "
                               f"{position_ids.shape} and {attention_mask.shape}")
        problem = None if draft is None else draft_problem(draft, b, s, self.draft_positions, self.vocab_size)
        if problem:
            raise BackendError(problem)
        graph = self.cuda_graph and s == 1
        plan = plan_step(batch=b, seq=s, past_len=past_len, capacity=self.limits.max_seq_len, graph=graph,
                         row_bytes=self._row)
        mask = expand_mask(np.asarray(attention_mask, np.int64), plan, past_len)
        cuda, stream = self._cuda, self.stream
        for buf, array, dtype in ((self._embeds, embeds, np.float32), (self._positions, position_ids, np.int64),
                                  (self._mask, mask, np.int64)):
            staging = buf.host(array.shape, dtype)
            np.copyto(staging, array, casting="same_kind")
            cuda.memcpy_async(buf.device, buf.host_ptr, staging.nbytes, H2D, stream)

        ctx = self._decode_ctx if s == 1 else self._prefill_ctx
        key = (cache.slot, b)
        if graph and key in self._graphs:
            cuda.graph_launch(self._graphs[key], stream)
        else:
            self._bind_decoder(ctx, cache, b, s, past_len, plan, mask.shape)
            if graph:
                self._capture(ctx, key)
            else:
                self._execute(ctx, "decoder")
        if not plan.direct:  # scratch (B, S, ...) -> cache[:, past_len:past_len + S]
            pitch = self.limits.max_seq_len * self._row
            width = s * self._row
            for scratch, dst in zip(self._scratch, cache.keys + cache.values):
                cuda.memcpy2d_async(dst + past_len * self._row, pitch, scratch, width, width, b, D2D, stream)
        logits = self._logits.host((b, self.vocab_size), np.float32)
        cuda.memcpy_async(self._logits.host_ptr, self._logits.device, logits.nbytes, D2H, stream)
        if draft is not None:  # multi-token runs take the prefill context, never a CUDA graph
            drafted = self._draft.host(draft.shape, np.float32)
            cuda.memcpy_async(self._draft.host_ptr, self._draft.device, drafted.nbytes, D2H, stream)
        cuda.stream_synchronize(stream)
        if draft is not None:
            np.copyto(draft, drafted)
        if hook is not None:
            elapsed = time.perf_counter() - started
            hook(s, elapsed, elapsed)
        return logits  # pinned buffer reused by the next forward (the interface allows it)

    def _bind_decoder(self, ctx, cache: DeviceKVCache, b: int, s: int, past_len: int, plan: StepPlan,
                      mask_shape) -> None:
        self._set(ctx, "decoder", _EMBEDS, (b, s, self.hidden_size), self._embeds.device)
        self._set(ctx, "decoder", _POSITIONS, (3, b, s), self._positions.device)
        self._set(ctx, "decoder", _MASK, tuple(mask_shape), self._mask.device)
        past_shape = (b, plan.past_bound, self.kv_heads, self.head_dim)
        for i in range(self.num_layers):
            names = zip(past_names(i), new_names(i), (cache.keys, cache.values))
            for j, (past_name, new_name, pointers) in enumerate(names):
                base = pointers[i]
                self._set(ctx, "decoder", past_name, past_shape, base)
                out = base + past_len * self._row if plan.direct else self._scratch[j * self.num_layers + i]
                self._address(ctx, "decoder", new_name, out)
        self._address(ctx, "decoder", LOGITS, self._logits.device)
        if self._draft is not None:
            self._address(ctx, "decoder", DRAFT_LOGITS, self._draft.device)

    def _capture(self, ctx, key) -> None:
        """Run once (TensorRT finishes shape-dependent setup), wait for it, then capture the same enqueue as a CUDA
        graph (trtexec synchronises there too: deferred setup work must not land in the graph)."""
        self._execute(ctx, "decoder")
        cuda = self._cuda
        cuda.stream_synchronize(self.stream)
        try:
            cuda.begin_capture(self.stream)
            try:
                ok = ctx.execute_async_v3(self.stream)
            except RuntimeError:
                ok = False
            graph = cuda.end_capture(self.stream)
        except BackendError as exc:
            log.warning("CUDA graph capture failed (%s); decoding without graphs", exc)
            self.cuda_graph = False
            return
        if not ok:
            cuda.graph_destroy(graph)
            self.cuda_graph = False
            log.warning("TensorRT could not enqueue under CUDA graph capture; decoding without graphs")
            return
        self._graphs[key] = graph
        # The warm-up run already produced this step's outputs; the graph serves the following steps.

    def _set(self, ctx, graph: str, name: str, shape, address: int) -> None:
        shape = tuple(int(x) for x in shape)
        step = f"set the shape of {name} to {shape} (outside the engine's profile? rebuild with larger limits)"
        with tensorrt_step(graph, step):
            ok = ctx.set_input_shape(name, shape)
        if not ok:
            raise BackendError(f"the {graph} engine: TensorRT failed to {step}")
        self._address(ctx, graph, name, address)

    @staticmethod
    def _address(ctx, graph: str, name: str, address: int) -> None:
        if address % ALIGNMENT:  # TensorRT would refuse it; say why
            raise BackendError(f"the {graph} engine: address {address:#x} of tensor {name} is not {ALIGNMENT}-byte "
                               "aligned")
        with tensorrt_step(graph, f"bind tensor {name}"):
            ok = ctx.set_tensor_address(name, int(address))
        if not ok:
            raise BackendError(f"the {graph} engine: TensorRT refused the address of tensor {name}")

    def _execute(self, ctx, graph: str) -> None:
        with tensorrt_step(graph, "execute (enqueue)"):
            ok = ctx.execute_async_v3(self.stream)
        if not ok:
            raise BackendError(f"the {graph} engine: TensorRT execution failed (see the TensorRT log)")

    # -- reporting ---------------------------------------------------------------------------------------------
    @property
    def device_memory_bytes(self) -> int:
        return sum(self.memory_report().values())

    def memory_report(self) -> dict[str, int]:
        """Device bytes by part: engine activations (per context), I/O buffers, KV cache slots, scratch."""
        def activation(engine, profile=None):
            if profile is not None:
                for attr in ("get_device_memory_size_for_profile_v2", "get_device_memory_size_for_profile"):
                    if hasattr(engine, attr):
                        return int(getattr(engine, attr)(profile))
            return int(getattr(engine, "device_memory_size_v2", getattr(engine, "device_memory_size", 0)))

        io = sum(buf.nbytes for buf in [*self._vision.values(), self._vision_out, self._embeds, self._positions,
                                        self._mask, self._logits])
        return {
            "vision_activations": activation(self.vision_engine),
            "prefill_activations": activation(self.decoder_engine, 0),
            "decode_activations": activation(self.decoder_engine, 1),
            "io_buffers": io,
            "kv_cache": sum(slot["bytes"] for slot in getattr(self, "_slots", [])),
            "kv_scratch": len(self._scratch) * self.limits.batch * self._scratch_seq * self._row,
        }

    def describe(self) -> dict:
        free, total = self._cuda.mem_get_info()
        return {"backend": self.name, "provider": self.provider, "cuda_graph": self.cuda_graph,
                "limits": asdict(self.limits),
                "memory": self.memory_report(), "device_free": free, "device_total": total,
                "engines_built": self.record.get("created")}

    def close(self) -> None:
        """Free device memory now (also done at interpreter exit by the driver)."""
        cuda = self._cuda
        for graph in self._graphs.values():
            cuda.graph_destroy(graph)
        self._graphs.clear()
        for ptr in self._allocations:
            cuda.free(ptr)
        for ptr in self._host_allocations:
            cuda.free_host(ptr)
        self._allocations, self._host_allocations = [], []
        if getattr(self, "stream", None):
            cuda.stream_destroy(self.stream)
            self.stream = 0


def create_backend(bundle, **options) -> TensorRTBackend:
    """Factory matching backends.create_backend(bundle, "tensorrt", **options)."""
    return TensorRTBackend(bundle, **options)
