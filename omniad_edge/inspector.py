"""Inspector: the one entry class.

    from omniad_edge import Inspector
    inspector = Inspector("bundle_dir", mode="explain", reference=["good_part.png"])
    inspection = inspector.run(frame)          # -> Inspection
    letter = inspector.ask(frame, "Is there any defect in the object?", ["Yes.", "No."])

Any bad frame raises FrameError and leaves the Inspector usable for the next frame; malformed model output never
raises (the mask is repaired and `mask_repaired` set).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .bundle import Bundle, load_bundle
from .errors import OmniADError
from .frame import to_rgb
from .generate import Generation, Generator, Request
from .inspection import Box, Inspection
from .preprocess import concat_images, preprocess_image
from .prompt import PromptBuilder, parse_choice
from .tokenizer import Tokenizer

MODES = ("detect", "explain")
DEFAULT_MAX_NEW_TOKENS = {"detect": 160, "explain": 320}


class InspectorError(OmniADError, ValueError):
    """Bad Inspector options (mode, token limits, sampler settings)."""


@dataclass
class _Image:
    rgb_shape: tuple[int, int]
    embeds: np.ndarray
    grid: tuple[int, int, int]
    preprocess_ms: float
    vision_ms: float


class Inspector:
    """Loads a bundle once and inspects frames with it.

    engine: bundle directory, a loaded Bundle, or None for the embedded default bundle.
    mode: "detect" stops as soon as the mask is written; "explain" also writes the explanation and the answer.
    reference: normal sample images (any frame type) shown before every query; their prefix is prefilled once.
    constrain: restrict the output to the manifest's grammar (llguidance) and feed forced tokens in one forward.
    providers / threads / allow_fallback / optimization: passed to the ONNX Runtime backend.
    temperature / top_k / top_p / min_p / repetition_penalty / seed: the sampler (greedy by default).
    """

    def __init__(self, engine=None, *, mode: str = "detect", providers=None, reference=None,
                 constrain: bool = False, max_new_tokens: int | None = None, threads: int | None = None,
                 seed: int = 0, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                 repetition_penalty: float = 1.0, backend: str = "onnxruntime", allow_fallback: bool = False,
                 optimization: str = "all", prefix_cache: bool = True, verify: bool = True, color: str = "rgb",
                 smooth_mask: bool = False, backend_options: dict | None = None):
        if mode not in MODES:
            raise InspectorError(f"mode must be one of {list(MODES)}, got {mode!r}")
        if max_new_tokens is not None and (not isinstance(max_new_tokens, int) or max_new_tokens < 1):
            raise InspectorError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
        if color not in ("rgb", "bgr"):
            raise InspectorError(f"color must be 'rgb' or 'bgr', got {color!r}")
        from . import tam
        from .backends import create_backend
        from .sampling import Sampler

        self.bundle: Bundle = load_bundle(engine, verify=verify)
        self.mode = mode
        self.color = color
        self.smooth_mask = smooth_mask
        self.max_new_tokens = max_new_tokens or DEFAULT_MAX_NEW_TOKENS[mode]
        self.tokenizer = Tokenizer.from_bundle(self.bundle)
        self.prompts = PromptBuilder(self.bundle.prompt, self.bundle.tokens, self.tokenizer)
        output = self.bundle.output
        self.tags = output["tags"]
        self.codec = tam.codec_from_spec(output["mask"], tags=tuple(self.tags["mask"]))
        self.labels = list(output["mask"]["labels"])
        self.answers = dict(output.get("answers", {}))
        self.backend = create_backend(self.bundle, backend, providers=providers, threads=threads,
                                      allow_fallback=allow_fallback, optimization=optimization,
                                      **(backend_options or {}))
        try:
            self.sampler = Sampler(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                   repetition_penalty=repetition_penalty, seed=seed)
        except (TypeError, ValueError) as exc:
            raise InspectorError(f"sampler settings: {exc}") from None
        self.generator = Generator(self.backend, self.bundle, self.tokenizer, self.sampler,
                                   empty_mask_ids=self._empty_mask_ids(output),
                                   mask_stream_factory=self.codec.stream, prefix_cache=prefix_cache,
                                   needs_previous=repetition_penalty != 1.0)
        self.grammar = None
        if constrain:
            from .grammar import OutputGrammar

            self.grammar = OutputGrammar(output, self.tokenizer, int(self.bundle.model["vocab_size"]),
                                         self.bundle.eos_ids)
        self.options = {"mode": mode, "constrain": bool(constrain), "max_new_tokens": self.max_new_tokens,
                        "temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p,
                        "repetition_penalty": repetition_penalty, "seed": seed, "threads": threads,
                        "backend": backend, "prefix_cache": prefix_cache, "bundle": self.bundle.name}
        self._references: list[_Image] = []
        self._reference_version = 0
        if reference is not None:
            self.set_reference(reference)

    # -- setup --------------------------------------------------------------------------------------------------
    def _empty_mask_ids(self, output) -> list[int]:
        """Tokens of the output's start when the mask is empty; only when the mask block comes first."""
        if output["order"][0] != "mask":
            return []
        empty = self.codec.encode(np.zeros((self.codec.grid, self.codec.grid), np.uint8))
        return self.tokenizer.encode(self.tags["mask"][0] + empty)

    def set_reference(self, images) -> None:
        """Normal sample images shown before every query (MMAD-style templates); [] or None removes them."""
        if images is None:
            images = []
        if not isinstance(images, (list, tuple)):
            images = [images]
        self._references = [self._encode(to_rgb(image, color=self.color)) for image in images]
        self._reference_version += 1
        self.options["references"] = len(self._references)

    def _encode(self, rgb: np.ndarray) -> _Image:
        t0 = time.perf_counter()
        spec = self.bundle.preprocess
        vision = self.bundle.model["vision"]
        pre = preprocess_image(rgb, spec)
        inputs = concat_images([pre], int(vision["spatial_merge_size"]), vision["window_size"],
                               int(vision["patch_size"]))
        t1 = time.perf_counter()
        embeds = self.backend.encode_image(inputs)
        t2 = time.perf_counter()
        return _Image(rgb.shape[:2], np.asarray(embeds, np.float32), tuple(pre.grid_thw), (t1 - t0) * 1e3,
                      (t2 - t1) * 1e3)

    def _request(self, image: _Image, task: str | None, answers=None) -> Request:
        counts = [r.embeds.shape[0] for r in self._references] + [image.embeds.shape[0]]
        n_ref = len(self._references)
        prompt = (self.prompts.detect(counts, n_ref) if task is None
                  else self.prompts.render(task, counts, n_ref))
        constraint = self.grammar.constraint(answers) if self.grammar is not None else None
        return Request(prompt=prompt, image_embeds=[r.embeds for r in self._references] + [image.embeds],
                       grids=[r.grid for r in self._references] + [image.grid], constraint=constraint)

    def _generate(self, requests, *, max_new_tokens, stop_on_mask_close, stream=None) -> list[Generation]:
        return self.generator.generate(requests, max_new_tokens=max_new_tokens,
                                       stop_on_mask_close=stop_on_mask_close, stream=stream,
                                       prefix_key=("references", self._reference_version))

    # -- public API ---------------------------------------------------------------------------------------------
    def run(self, frame, *, stream: Callable[[str], None] | None = None) -> Inspection:
        """Inspect one frame. stream(chunk) receives the generated text as it arrives."""
        t0 = time.perf_counter()
        image = self._encode(to_rgb(frame, color=self.color))
        generation, = self._generate([self._request(image, None)], max_new_tokens=self.max_new_tokens,
                                     stop_on_mask_close=self.mode == "detect", stream=stream)
        return self._inspection(image, generation, t0)

    def run_batch(self, frames: Sequence) -> list[Inspection]:
        """Inspect several frames in one left-padded batch (same results as one by one, greedy)."""
        if not isinstance(frames, (list, tuple)) or not frames:
            raise InspectorError("frames must be a non-empty list of frames")
        t0 = time.perf_counter()
        images = [self._encode(to_rgb(frame, color=self.color)) for frame in frames]
        generations = self._generate([self._request(image, None) for image in images],
                                     max_new_tokens=self.max_new_tokens,
                                     stop_on_mask_close=self.mode == "detect")
        return [self._inspection(image, generation, t0) for image, generation in zip(images, generations)]

    def generate(self, frame, prompt: str, max_new_tokens: int | None = None) -> tuple[list[int], str]:
        """Free generation: the frame (after any references) and `prompt` as the task text; (token ids, text)."""
        image = self._encode(to_rgb(frame, color=self.color))
        generation, = self._generate([self._request(image, prompt)],
                                     max_new_tokens=max_new_tokens or self.max_new_tokens,
                                     stop_on_mask_close=False)
        return generation.ids, generation.text

    def ask(self, frame, question: str, options, max_new_tokens: int = 128) -> str | None:
        """MMAD-style multiple choice: the chosen letter (last standalone A-E in the answer), or None."""
        from .prompt import ask_text, format_options

        letters = [k for k, _ in format_options(options)]
        image = self._encode(to_rgb(frame, color=self.color))
        request = self._request(image, ask_text(question, options), answers=letters)
        generation, = self._generate([request], max_new_tokens=max_new_tokens, stop_on_mask_close=False)
        blocks = self._blocks(generation.text)
        return parse_choice(blocks.get("answer") or generation.text, options)

    # -- postprocessing -----------------------------------------------------------------------------------------
    def _blocks(self, text: str) -> dict[str, str]:
        """Contents of each tagged block (an unterminated block runs to the end of the text)."""
        out = {}
        for name, (open_tag, close_tag) in self.tags.items():
            start = text.find(open_tag)
            if start < 0:
                continue
            start += len(open_tag)
            end = text.find(close_tag, start)
            out[name] = text[start:] if end < 0 else text[start:end]
        return out

    def _inspection(self, image: _Image, generation: Generation, t0: float) -> Inspection:
        from . import tam

        t_post = time.perf_counter()
        text = generation.text
        blocks = self._blocks(text)
        h, w = image.rgb_shape
        repaired = False
        if "mask" in blocks:
            decoded = self.codec.decode(blocks["mask"])
            grid = np.asarray(decoded.grid, np.uint8)
            repaired = bool(decoded.repaired) or not decoded.complete
        else:
            grid = np.zeros((self.codec.grid, self.codec.grid), np.uint8)
            repaired = True  # no mask block at all: treated as empty, flagged
        mask = tam.grid_to_mask(grid, (h, w), smooth=self.smooth_mask)
        boxes = []
        for comp in tam.components(grid, (h, w)):
            label = self.labels[comp.label] if comp.label < len(self.labels) else str(comp.label)
            x0, y0, x1, y1 = comp.box
            boxes.append(Box(x0, y0, x1, y1, label, comp.area))
        defect_type = None
        if grid.any():
            values, counts = np.unique(grid[grid > 0], return_counts=True)
            top = int(values[np.argmax(counts)])
            defect_type = self.labels[top] if top < len(self.labels) else str(top)
        answer = blocks.get("answer")
        answer = answer.strip() if answer is not None else None
        if answer is not None and answer.lower() == str(self.answers.get("anomalous", "")).lower():
            is_anomalous = True
        elif answer is not None and answer.lower() == str(self.answers.get("normal", "")).lower():
            is_anomalous = False
        else:
            is_anomalous = bool(grid.any())
        score = generation.score
        if score is None:  # no empty-mask reference (mask not first): fall back to the decision
            score = 1.0 if is_anomalous else 0.0
        explanation = blocks.get("explanation")
        t_end = time.perf_counter()
        post_ms = (t_end - t_post) * 1e3
        timings = {
            "preprocess": image.preprocess_ms,
            "vision": image.vision_ms,
            "prefill": generation.timings["prefill"],
            "decode": generation.timings["decode"],
            "postprocess": post_ms,
            "total": (t_end - t0) * 1e3,
        }
        return Inspection(
            is_anomalous=is_anomalous, score=float(score), mask=mask, boxes=boxes, defect_type=defect_type,
            explanation=explanation.strip() if explanation is not None else None, answer=answer, text=text,
            grid=grid, mask_repaired=repaired, prompt_tokens=generation.prompt_tokens,
            generated_tokens=len(generation.ids), finish_reason=generation.finish_reason, timings=timings,
            provider=self.backend.provider, options=dict(self.options, prefix_tokens=int(
                generation.timings.get("prefix_len", 0))))

    def __repr__(self) -> str:
        return (f"Inspector({self.bundle.name!r}, mode={self.mode!r}, provider={self.backend.provider!r}, "
                f"references={len(self._references)})")
