"""Inspector: the one entry class.

    from omniad_edge import Inspector
    inspector = Inspector("bundle_dir", mode="explain", reference=["good_part.png"])
    inspection = inspector.run(frame)          # -> Inspection
    letter = inspector.ask(frame, "Is there any defect in the object?", ["Yes.", "No."])

Any bad frame raises FrameError and leaves the Inspector usable for the next frame; malformed model output never
raises (the mask is repaired and `mask_repaired` set).

Threads: one Inspector may be shared by any number of threads; every call gives exactly the result it gives alone.
Shared: the bundle, the backend's sessions and weights, the embedding table, the references and their prefilled
prefix KV. Per call: the working KV cache with the backend's IO binding and logits buffer (from a pool, so one thread
allocates nothing per step), the sampler's generator (seeded per call), the step buffers. With the ONNX Runtime
backend calls run concurrently; a backend that is not `concurrent` (TensorRT) runs them one at a time.
`set_reference` while other threads run: each call uses the references it started with or the new ones, whole.
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np

from .bundle import Bundle, load_bundle
from .contract import output_blocks
from .errors import BackendError, InspectorClosedError, OmniADError
from .frame import to_rgb
from .generate import Generation, Generator, Request
from .inspection import UNKNOWN_DEFECT, Box, Inspection, verdict_score
from .preprocess import concat_images, preprocess_image
from .prompt import PromptBuilder, parse_choice
from .tokenizer import Tokenizer

log = logging.getLogger("omniad_edge")

MODES = ("detect", "explain")
_DEFAULT = object()  # run(tiles=...) not given: the Inspector's own setting
_TILE_BATCH = 8  # tiles decoded per batch
DEFAULT_MAX_NEW_TOKENS = {"detect": 160, "explain": 320}
ANSWER_ONLY_DETECT_TOKENS = 16  # detect on an answer-only model writes just the answer and its close tag


class InspectorError(OmniADError, ValueError):
    """Bad Inspector options (mode, token limits, sampler settings)."""


@dataclass
class _Image:
    rgb_shape: tuple[int, int]
    embeds: np.ndarray
    grid: tuple[int, int, int]
    preprocess_ms: float
    vision_ms: float
    rgb: np.ndarray | None = None  # the frame itself, for the refine stage


@dataclass(frozen=True)
class _References:
    """The reference images in use and their version (the prefix cache key); replaced whole, never changed."""

    version: int
    images: tuple[_Image, ...]


class Inspector:
    """Loads a bundle once and inspects frames with it.

    engine: bundle directory, a loaded Bundle, or None for the embedded default bundle.
    mode: "detect" stops as soon as the mask is written; "explain" also writes the explanation and the answer.
    reference: normal sample images (any frame type) shown before every query; their prefix is prefilled once.
    constrain: restrict the output to the manifest's grammar (llguidance) and feed forced tokens in one forward.
    providers / threads / allow_fallback / optimization: passed to the ONNX Runtime backend.
    temperature / top_k / top_p / min_p / repetition_penalty / seed: the sampler (greedy by default). Each call
        draws from a generator started at `seed`, so a frame's result does not depend on earlier calls or threads.
    warmup: run one small frame at construction (first-call costs: graph optimisation, allocations) (`warmup()`).
    tiles / tile_overlap: opt-in tiling of large frames in run(): "auto", n or (rows, cols) overlapping tiles
        inspected in batches and merged into frame coordinates (omniad_edge.tiling); None (default): no tiling.
    refine: the mask refinement stage (omniad_edge.refine): None (default) runs it when the bundle has a refine
        graph, True requires one, False keeps the grid's mask.
    speculative: draft the output from the station's earlier outputs and check the drafts in one decoder run
        (omniad_edge.drafting): the same text in fewer runs. Used in explain mode where it is exact (greedy,
        unconstrained, one frame per call) and the bundle's decoder returns draft logits (manifest
        graphs.decoder.draft_logits); elsewhere plain decoding runs. Detect mode stays plain: its few tokens (the
        mask) vary from frame to frame, and the native token loop, which speculation gives up, was faster there
        (benchmarks/results/compare-reference-fp32-detect-speculative.md). Off by default: a checked draft's
        logits come from a longer run, so scores can differ from plain decoding's in the last float digits, and
        depend on what earlier frames wrote (greedy text too, at a near-tie); plain decoding gives a frame the
        same result whatever ran before.

    Lifecycle: `close()` (or `with Inspector(...) as inspector:`) waits for calls in flight, then releases the
    backend; any later call raises InspectorClosedError. Thread-safe: see the module docstring.
    """

    def __init__(self, engine=None, *, mode: str = "detect", providers=None, reference=None,
                 constrain: bool = False, max_new_tokens: int | None = None, threads: int | None = None,
                 seed: int = 0, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                 repetition_penalty: float = 1.0, backend: str = "onnxruntime", allow_fallback: bool = False,
                 optimization: str = "all", prefix_cache: bool = True, verify: bool = True, color: str = "rgb",
                 smooth_mask: bool = False, backend_options: dict | None = None, warmup: bool = False,
                 tiles=None, tile_overlap: float = 0.125, refine: bool | None = None, speculative: bool = False):
        if mode not in MODES:
            raise InspectorError(f"mode must be one of {list(MODES)}, got {mode!r}")
        if max_new_tokens is not None and (not isinstance(max_new_tokens, int) or max_new_tokens < 1):
            raise InspectorError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
        if color not in ("rgb", "bgr"):
            raise InspectorError(f"color must be 'rgb' or 'bgr', got {color!r}")
        if not isinstance(speculative, bool):
            raise InspectorError(f"speculative must be True or False, got {speculative!r}")
        from . import tam
        from .backends import create_backend
        from .drafting import NgramDrafter
        from .sampling import Sampler

        self.bundle: Bundle = load_bundle(engine, verify=verify)
        self.tiles, self.tile_overlap = tiles, tile_overlap
        self._tiling(tiles, 1, 1)  # checks the options before anything heavy loads
        self.mode = mode
        self.color = color
        self.smooth_mask = smooth_mask
        output = self.bundle.output
        # answer-only models (IAD-R1, AnomalyR1: think + answer) write no mask
        self.has_mask = "mask" in output["order"]
        if tiles is not None and not self.has_mask:
            raise InspectorError(f"tiling merges the tiles' masks; {self.bundle.name} writes no mask "
                                 f"(output order {output['order']})")
        default_tokens = DEFAULT_MAX_NEW_TOKENS[mode] if self.has_mask or mode == "explain" \
            else ANSWER_ONLY_DETECT_TOKENS
        self.max_new_tokens = max_new_tokens or default_tokens
        self.tokenizer = Tokenizer.from_bundle(self.bundle)
        self.prompts = PromptBuilder(self.bundle.prompt, self.bundle.tokens, self.tokenizer)
        self.tags = output["tags"]
        self.codec = tam.codec_from_spec(output["mask"], tags=tuple(self.tags["mask"])) if self.has_mask else None
        self.labels = list(output["mask"]["labels"]) if self.has_mask else []
        self.answers = dict(output.get("answers", {}))
        self.answer_probe = None if self.has_mask else self._answer_probe()
        # detect on an answer-only model skips the reasoning: the assistant turn starts at the answer's open tag
        self._answer_first = self.answer_probe is not None and mode == "detect"
        self._answer_lead_text = self.tokenizer.decode(list(self.answer_probe.lead)) if self._answer_first else ""
        self.backend = create_backend(self.bundle, backend, providers=providers, threads=threads,
                                      allow_fallback=allow_fallback, optimization=optimization,
                                      **(backend_options or {}))
        self.refiner = self._refiner(refine, threads)
        try:
            self.sampler = Sampler(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                   repetition_penalty=repetition_penalty, seed=seed)
        except (TypeError, ValueError) as exc:
            raise InspectorError(f"sampler settings: {exc}") from None
        self.generator = Generator(self.backend, self.bundle, self.tokenizer, self.sampler,
                                   empty_mask_ids=self._empty_mask_ids(output),
                                   mask_stream_factory=self.codec.stream if self.codec else None,
                                   prefix_cache=prefix_cache, needs_previous=repetition_penalty != 1.0,
                                   answer_probe=self.answer_probe,
                                   drafter=NgramDrafter() if speculative and mode == "explain" else None)
        self.grammar = None
        if constrain:
            from .grammar import OutputGrammar

            self.grammar = OutputGrammar(output, self.tokenizer, int(self.bundle.model["vocab_size"]),
                                         self.bundle.eos_ids)
        self.options = {"mode": mode, "constrain": bool(constrain), "max_new_tokens": self.max_new_tokens,
                        "temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p,
                        "repetition_penalty": repetition_penalty, "seed": seed, "threads": threads,
                        "backend": backend, "prefix_cache": prefix_cache, "bundle": self.bundle.name,
                        "tiles": list(tiles) if isinstance(tiles, tuple) else tiles,
                        "refine": self.refiner is not None,
                        "speculative": self.generator.drafter is not None}
        self._references = _References(0, ())
        self._state = threading.Condition()  # guards _closed and _busy (calls in flight)
        self._closed = False
        self._busy = 0
        if reference is not None:
            self.set_reference(reference)
        if warmup:
            self.warmup()

    # -- lifecycle ----------------------------------------------------------------------------------------------
    @contextmanager
    def _call(self):
        """Marks a public call in flight; refused once closed."""
        with self._state:
            if self._closed:
                raise InspectorClosedError(f"this Inspector ({self.bundle.name}) is closed; create a new one")
            self._busy += 1
        try:
            yield
        finally:
            with self._state:
                self._busy -= 1
                if not self._busy:
                    self._state.notify_all()

    def close(self) -> None:
        """Waits for the calls in flight, then releases the backend (sessions, device memory). Idempotent.
        Not from inside a call of this Inspector (a run(stream=...) callback): it would wait for itself."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            while self._busy:
                self._state.wait()
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()
        log.debug("inspector for %s closed", self.bundle.name)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Inspector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def warmup(self) -> float:
        """Runs one small synthetic frame end to end (vision, prefill, a few decode steps); -> milliseconds.
        The first call of a session pays for graph optimisation and allocations; this moves it out of the first
        real frame."""
        with self._call():
            t0 = time.perf_counter()
            frame = np.full((224, 224, 3), 128, np.uint8)
            image = self._encode(frame)
            refs = self._references
            self._generate(refs, [self._request(refs, image, None)], max_new_tokens=min(8, self.max_new_tokens),
                           stop_on_mask_close=False)
            if self.refiner is not None:
                grid = np.zeros((self.codec.grid, self.codec.grid), np.uint8)
                grid[0, 0] = 1
                self.refiner.logits(frame, grid)
            ms = (time.perf_counter() - t0) * 1e3
        log.info("warm-up of %s on %s: %.1f ms", self.bundle.name, self.backend.provider, ms)
        return ms

    # -- setup --------------------------------------------------------------------------------------------------
    def _empty_mask_ids(self, output) -> list[int]:
        """Tokens of the output's start when the mask is empty; only when the mask block comes first."""
        if output["order"][0] != "mask":
            return []
        empty = self.codec.encode(np.zeros((self.codec.grid, self.codec.grid), np.uint8))
        return self.tokenizer.encode(self.tags["mask"][0] + empty)

    def _refiner(self, refine, threads):
        if refine not in (None, True, False):
            raise InspectorError(f"refine must be None, True or False, got {refine!r}")
        available = self.bundle.refine is not None and self.has_mask
        if refine and not available:
            raise InspectorError(f"refine=True: {self.bundle.name} has no refine graph"
                                 + ("" if self.has_mask else " (and writes no mask)"))
        if not (available and refine is not False):
            return None
        from .refine import Refiner

        try:
            return Refiner(self.bundle, threads=threads)
        except BackendError as exc:
            if refine:
                raise InspectorError(f"refine=True: {exc}") from None
            log.warning("%s: mask refinement off: %s", self.bundle.name, exc)
            return None

    def _answer_probe(self):
        """Token ids after which an answer-only model writes its answer, and the first token of each spelling of
        the two answers ("yes", "Yes", "YES", ...); None when the answers cannot be told apart by one token."""
        from .generate import AnswerProbe

        if "answer" not in self.tags or set(self.answers) != {"anomalous", "normal"}:
            return None
        open_tag = self.tags["answer"][0]
        spelled = {key: [self.tokenizer.encode(open_tag + form)
                         for form in sorted({text, text.lower(), text.capitalize(), text.upper()})]
                   for key, text in self.answers.items()}
        every = [ids for forms in spelled.values() for ids in forms]
        lead = 0  # tokens shared by every spelling: the tag may merge with the answer's first letters
        while all(len(ids) > lead and ids[lead] == every[0][lead] for ids in every):
            lead += 1
        first = {key: {ids[lead] for ids in forms} for key, forms in spelled.items()}
        both = first["anomalous"] & first["normal"]
        anomalous, normal = sorted(first["anomalous"] - both), sorted(first["normal"] - both)
        if not anomalous or not normal or lead == 0:
            log.warning("%s: the answers %s share their first token; score falls back to the verdict",
                        self.bundle.name, self.answers)
            return None
        return AnswerProbe(tuple(every[0][:lead]), tuple(anomalous), tuple(normal))

    def set_reference(self, images) -> None:
        """Normal sample images shown before every query (MMAD-style templates); [] or None removes them."""
        if images is None:
            images = []
        if not isinstance(images, (list, tuple)):
            images = [images]
        with self._call():
            encoded = [self._encode(to_rgb(image, color=self.color)) for image in images]
            with self._state:
                # one assignment: a call in another thread uses the old or the new references, never a mix
                self._references = _References(self._references.version + 1, tuple(encoded))
            self.options["references"] = len(encoded)

    def _encode(self, rgb: np.ndarray) -> _Image:
        t0 = time.perf_counter()
        spec = self.bundle.preprocess
        vision = self.bundle.model["vision"]
        pre = preprocess_image(rgb, spec)
        inputs = concat_images([pre], int(vision["spatial_merge_size"]), vision["window_size"],
                               int(vision["patch_size"]))
        t1 = time.perf_counter()
        with self.generator.exclusive:
            embeds = self.backend.encode_image(inputs)
        t2 = time.perf_counter()
        return _Image(rgb.shape[:2], np.asarray(embeds, np.float32), tuple(pre.grid_thw), (t1 - t0) * 1e3,
                      (t2 - t1) * 1e3, rgb if self.refiner is not None else None)

    def _request(self, refs: "_References", image: _Image, task: str | None, answers=None) -> Request:
        counts = [r.embeds.shape[0] for r in refs.images] + [image.embeds.shape[0]]
        n_ref = len(refs.images)
        prompt = (self.prompts.detect(counts, n_ref) if task is None
                  else self.prompts.render(task, counts, n_ref))
        constraint = self.grammar.constraint(answers) if self.grammar is not None else None
        lead_in_prompt = task is None and self._answer_first
        if lead_in_prompt:
            # the grammar starts at the first block, which this prompt skips: the answer runs unconstrained
            prompt = replace(prompt, ids=np.concatenate([prompt.ids, np.asarray(self.answer_probe.lead, np.int64)]))
            constraint = None
        return Request(prompt=prompt, image_embeds=[r.embeds for r in refs.images] + [image.embeds],
                       grids=[r.grid for r in refs.images] + [image.grid], constraint=constraint,
                       answer_lead_in_prompt=lead_in_prompt)

    def _generate(self, refs: "_References", requests, *, max_new_tokens, stop_on_mask_close,
                  stream=None) -> list[Generation]:
        return self.generator.generate(requests, max_new_tokens=max_new_tokens,
                                       stop_on_mask_close=stop_on_mask_close, stream=stream,
                                       prefix_key=("references", refs.version))

    def _detect(self, images: Sequence[_Image], stream=None) -> list[Generation]:
        """The inspection generation of already encoded frames, in one batch."""
        refs = self._references
        return self._generate(refs, [self._request(refs, image, None) for image in images],
                              max_new_tokens=self.max_new_tokens, stop_on_mask_close=self.mode == "detect",
                              stream=stream)

    def _tiling(self, tiles, height: int, width: int) -> tuple[int, int]:
        if tiles is None:
            return 1, 1
        from .tiling import resolve_tiles

        try:
            return resolve_tiles(tiles, height, width, int(self.bundle.preprocess["max_pixels"]), self.tile_overlap)
        except ValueError as exc:
            raise InspectorError(str(exc)) from None

    def _run_tiled(self, rgb: np.ndarray, rows: int, cols: int, t0: float) -> Inspection:
        from .tiling import merge, plan_tiles

        rects = plan_tiles(rgb.shape[0], rgb.shape[1], rows, cols, self.tile_overlap)
        tiles = []
        for start in range(0, len(rects), _TILE_BATCH):
            images = [self._encode(np.ascontiguousarray(rgb[y0:y1, x0:x1]))
                      for x0, y0, x1, y1 in rects[start:start + _TILE_BATCH]]
            tiles += [self._inspection(image, generation, t0)
                      for image, generation in zip(images, self._detect(images))]
        return merge(self, rgb.shape[:2], rects, tiles, self.tile_overlap, t0)

    # -- public API ---------------------------------------------------------------------------------------------
    def run(self, frame, *, stream: Callable[[str], None] | None = None, tiles=_DEFAULT) -> Inspection:
        """Inspect one frame. stream(chunk) receives the generated text as it arrives (not with tiling).
        tiles: override the Inspector's tiling for this frame (None: whole frame)."""
        with self._call():
            t0 = time.perf_counter()
            rgb = to_rgb(frame, color=self.color)
            rows, cols = self._tiling(self.tiles if tiles is _DEFAULT else tiles, rgb.shape[0], rgb.shape[1])
            if rows * cols > 1:
                return self._run_tiled(rgb, rows, cols, t0)
            image = self._encode(rgb)
            generation, = self._detect([image], stream=stream)
            return self._inspection(image, generation, t0)

    def run_batch(self, frames: Sequence) -> list[Inspection]:
        """Inspect several frames in one left-padded batch (same results as one by one, greedy)."""
        if not isinstance(frames, (list, tuple)) or not frames:
            raise InspectorError("frames must be a non-empty list of frames")
        with self._call():
            t0 = time.perf_counter()
            images = [self._encode(to_rgb(frame, color=self.color)) for frame in frames]
            generations = self._detect(images)
            return [self._inspection(image, generation, t0) for image, generation in zip(images, generations)]

    def stream(self, sources, *, batch: bool = True, prefetch: int = 2):
        """Pipelined inspection of several cameras: one iterable of frames per camera -> StreamResult per frame,
        in order per camera; vision of upcoming frames overlaps the decode (omniad_edge.stream)."""
        from .stream import stream

        if self._closed:
            raise InspectorClosedError(f"this Inspector ({self.bundle.name}) is closed; create a new one")
        return stream(self, sources, batch=batch, prefetch=prefetch)

    def generate(self, frame, prompt: str, max_new_tokens: int | None = None) -> tuple[list[int], str]:
        """Free generation: the frame (after any references) and `prompt` as the task text; (token ids, text)."""
        with self._call():
            refs = self._references
            image = self._encode(to_rgb(frame, color=self.color))
            generation, = self._generate(refs, [self._request(refs, image, prompt)],
                                         max_new_tokens=max_new_tokens or self.max_new_tokens,
                                         stop_on_mask_close=False)
            return generation.ids, generation.text

    def ask(self, frame, question: str, options, max_new_tokens: int = 128) -> str | None:
        """MMAD-style multiple choice: the chosen letter (last standalone A-E in the answer), or None."""
        from .prompt import ask_text, format_options

        letters = [k for k, _ in format_options(options)]
        with self._call():
            refs = self._references
            image = self._encode(to_rgb(frame, color=self.color))
            request = self._request(refs, image, ask_text(question, options), answers=letters)
            generation, = self._generate(refs, [request], max_new_tokens=max_new_tokens, stop_on_mask_close=False)
        blocks = output_blocks(generation.text, self.tags)
        return parse_choice(blocks.get("answer") or generation.text, options)

    # -- postprocessing -----------------------------------------------------------------------------------------
    def _inspection(self, image: _Image, generation: Generation, t0: float) -> Inspection:
        from . import tam

        t_post = time.perf_counter()
        text = generation.text
        if self._answer_first:  # the answer's open tag was written into the prompt
            text = self._answer_lead_text + text
        blocks = output_blocks(text, self.tags)
        h, w = image.rgb_shape
        grid = mask = defect_type = None
        boxes = []
        repaired = refined = False
        refine_ms = 0.0
        if self.has_mask:
            if "mask" in blocks:
                decoded = self.codec.decode(blocks["mask"])
                grid = np.asarray(decoded.grid, np.uint8)
                repaired = bool(decoded.repaired) or not decoded.complete
            else:
                grid = np.zeros((self.codec.grid, self.codec.grid), np.uint8)
                repaired = True  # no mask block at all: treated as empty, flagged
            mask = tam.grid_to_mask(grid, (h, w), smooth=self.smooth_mask)
            if self.refiner is not None and image.rgb is not None:
                t_refine = time.perf_counter()
                mask, refined = self.refiner.refine(image.rgb, grid, mask)
                refine_ms = (time.perf_counter() - t_refine) * 1e3
            # boxes: the grid's components, or the refined mask's (labelled by the grid cell they lie in)
            parts = (tam.components(tam.grid_to_labels(grid, (h, w)) * mask) if refined
                     else tam.components(grid, (h, w)))
            for comp in parts:
                label = self.labels[comp.label] if comp.label < len(self.labels) else str(comp.label)
                x0, y0, x1, y1 = comp.box
                boxes.append(Box(x0, y0, x1, y1, label, comp.area))
            if grid.any():
                values, counts = np.unique(grid[grid > 0], return_counts=True)
                top = int(values[np.argmax(counts)])
                defect_type = self.labels[top] if top < len(self.labels) else str(top)
        answer = blocks.get("answer")
        answer = answer.strip() if answer is not None else None
        said = answer.rstrip(".!").strip().lower() if answer is not None else None
        if said is not None and said == str(self.answers.get("anomalous", "")).lower():
            is_anomalous = True
        elif said is not None and said == str(self.answers.get("normal", "")).lower():
            is_anomalous = False
        elif grid is not None:
            is_anomalous = bool(grid.any())
        else:  # an answer-only model whose answer is unreadable: its own probability decides
            is_anomalous = generation.answer_score is not None and generation.answer_score >= 0.5
        if is_anomalous and defect_type is None:  # anomalous, but no mask label names the defect
            defect_type = UNKNOWN_DEFECT
        probability = generation.score if generation.score is not None else generation.answer_score
        explanation = blocks.get("explanation")
        t_end = time.perf_counter()
        timings = {
            "preprocess": image.preprocess_ms,
            "vision": image.vision_ms,
            "prefill": generation.timings["prefill"],
            "decode": generation.timings["decode"],
            "postprocess": (t_end - t_post) * 1e3 - refine_ms,
            "total": (t_end - t0) * 1e3,
        }
        if self.refiner is not None:
            timings["refine"] = refine_ms
        return Inspection(
            is_anomalous=is_anomalous, score=verdict_score(is_anomalous, probability), mask=mask, boxes=boxes,
            defect_type=defect_type, anomaly_probability=probability, mask_refined=refined,
            explanation=explanation.strip() if explanation is not None else None, answer=answer, text=text,
            grid=grid, mask_repaired=repaired, prompt_tokens=generation.prompt_tokens,
            generated_tokens=len(generation.ids), decode_forwards=generation.forwards, finish_reason=generation.finish_reason, timings=timings,
            provider=self.backend.provider, options=dict(self.options, prefix_tokens=int(
                generation.timings.get("prefix_len", 0))))

    def __repr__(self) -> str:
        return (f"Inspector({self.bundle.name!r}, mode={self.mode!r}, provider={self.backend.provider!r}, "
                f"references={len(self._references.images)}{', closed' if self._closed else ''})")
