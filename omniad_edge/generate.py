"""Prefill + decode loop: embeddings, mrope positions, prefix cache, left-padded batches, stop conditions, score.

Prefill gathers token embeddings from the bundle's embed_tokens table (memory-mapped), writes the image embeddings
over the image-pad rows and runs the prompt in one forward. A prefix that does not depend on the query frame
(system prompt + reference images) is prefilled once per key and its KV kept in a working cache, so each frame only
prefills its own suffix.

Score: the probability that the model writes the empty mask, P(E) with E = tokens of open_tag + encode(empty
grid), accumulated from the same logits the decoder samples from while the output follows E. When the output
leaves E at step j, the score uses P(E[:j+1]) (the model's probability of staying on the empty text there), an upper
bound of P(E) that needs no extra forward; when the output is E, it is P(E) exactly. score = 1 - that probability,
continuous in [0, 1], so AUROC needs no threshold on the text.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .positions import rope_positions
from .prompt import Prompt


@dataclass
class Request:
    """One sequence to generate: its prompt, image embeddings (per image, prompt order) and image grids."""

    prompt: Prompt
    image_embeds: Sequence[np.ndarray]
    grids: Sequence[tuple[int, int, int]]
    constraint: object | None = None  # grammar.Constraint for this row


@dataclass
class Generation:
    ids: list[int]
    text: str
    finish_reason: str  # eos | length | mask_closed | grammar
    score: float | None
    prompt_tokens: int
    timings: dict[str, float] = field(default_factory=dict)  # ms: prefill, decode
    forwards: int = 0  # decoder runs after the prefill (forced-token runs count once)
    forced_tokens: int = 0


class EmptyMaskScore:
    """Accumulates log P(empty-mask tokens) while the generated ids follow them (see module docstring)."""

    def __init__(self, empty_ids: Sequence[int]):
        self.target = list(empty_ids)
        self.pos = 0
        self.logp = 0.0
        self.active = bool(self.target)

    def expected(self) -> int | None:
        return self.target[self.pos] if self.active else None

    def observe(self, token: int, logp_target: float | None) -> None:
        """token was appended; logp_target is log P(target) from the logits it was chosen from (None: forced)."""
        if not self.active:
            return
        if logp_target is not None:
            self.logp += logp_target
        if token != self.target[self.pos]:
            self.active = False
            return
        self.pos += 1
        if self.pos == len(self.target):
            self.active = False

    @property
    def score(self) -> float | None:
        if not self.target:
            return None
        return float(min(1.0, max(0.0, 1.0 - math.exp(self.logp))))


class Generator:
    """The decode engine over a backend; one per Inspector (not thread-safe)."""

    def __init__(self, backend, bundle, tokenizer, sampler, *, empty_mask_ids: Sequence[int] = (),
                 mask_stream_factory: Callable[[], object] | None = None, prefix_cache: bool = True,
                 needs_previous: bool = False):
        from .sampling import log_softmax_at

        self.backend = backend
        self.bundle = bundle
        self.tokenizer = tokenizer
        self.sampler = sampler
        self._log_softmax_at = log_softmax_at
        self.embed = bundle.embed_tokens()
        self._table = np.asarray(self.embed)  # plain ndarray over the same mapping: no memmap subclass per lookup
        self.eos = np.array(sorted(set(bundle.eos_ids)), np.int64)
        self._eos = frozenset(int(t) for t in self.eos)
        self.pad_id = int(bundle.tokens.get("pad", bundle.eos_ids[0]))
        self.tokens = bundle.tokens
        self.merge = int(bundle.model["vision"]["spatial_merge_size"])
        self.max_position = int(bundle.model.get("max_position", 1 << 30))
        self.empty_mask_ids = list(empty_mask_ids)
        self.mask_stream_factory = mask_stream_factory
        self.prefix_cache = prefix_cache
        self.needs_previous = needs_previous  # repetition penalty: the sampler needs the generated ids
        self.forced_runs = True  # feed grammar-forced tokens as one multi-token forward (batch 1)
        self._prefix_key = None  # key of the prefix held in the working caches' first slots
        self._prefix_len = 0
        self._prefix_source = None  # batch-1 cache holding the prefix
        self._work: dict[int, object] = {}  # batch -> working cache
        self._work_prefix: dict[int, object] = {}  # batch -> key of the prefix its first slots hold
        self._last_forwards = 0

    # -- helpers -----------------------------------------------------------------------------------------------
    def _embeddings(self, request: Request) -> np.ndarray:
        ids = request.prompt.ids
        embeds = np.asarray(self._table[ids], dtype=np.float32)  # fancy index: copies only the rows used
        spans = request.prompt.image_spans
        if len(spans) != len(request.image_embeds):
            raise ValueError(f"prompt has {len(spans)} images, got {len(request.image_embeds)} image embeddings")
        for (start, n), image in zip(spans, request.image_embeds):
            if image.shape != (n, embeds.shape[1]):
                raise ValueError(f"image embeddings of shape {image.shape} do not fit {n} image tokens")
            embeds[start:start + n] = image
        return embeds

    def _cache(self, batch: int, length: int, prefix_key, prefix_len: int):
        """A working cache of at least `length` slots whose first prefix_len slots hold the prefix."""
        cache = self._work.get(batch)
        if cache is None or cache.max_len < length:
            cache = self.backend.new_cache(batch, max(length, 64))
            self._work[batch] = cache
            self._work_prefix[batch] = None
        if prefix_len and self._work_prefix.get(batch) != prefix_key:
            cache.copy_prefix(self._prefix_source, prefix_len)
            self._work_prefix[batch] = prefix_key
        return cache

    def _ensure_prefix(self, key, embeds: np.ndarray, positions: np.ndarray, length: int) -> float:
        """Prefill the prefix once per key; returns the ms spent (0 on a hit)."""
        if key == self._prefix_key and self._prefix_len == length:
            return 0.0
        start = time.perf_counter()
        source = self.backend.new_cache(1, length)
        self.backend.forward(embeds[None, :length], positions[:, None, :length], np.ones((1, length), np.int64),
                             source, 0)
        self._prefix_source, self._prefix_key, self._prefix_len = source, key, length
        self._work_prefix.clear()
        return (time.perf_counter() - start) * 1e3

    # -- the loop ----------------------------------------------------------------------------------------------
    def generate(self, requests: Sequence[Request], *, max_new_tokens: int, stop_on_mask_close: bool = False,
                 stream: Callable[[str], None] | None = None, prefix_key=None) -> list[Generation]:
        if not requests:
            return []
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        batch = len(requests)
        t0 = time.perf_counter()

        rows = []
        for r in requests:
            pos, delta = rope_positions(r.prompt.ids, list(r.grids), self.tokens, self.merge)
            rows.append((self._embeddings(r), pos, delta))
        lengths = [len(r.prompt) for r in requests]

        # Prefix: shared by every row (same references); only when the caller names it and it is non-trivial.
        prefix_len = 0
        prefix_ms = 0.0
        if self.prefix_cache and prefix_key is not None:
            prefix_len = min(r.prompt.prefix_len for r in requests)
            first = requests[0].prompt.ids[:prefix_len]
            if any(not np.array_equal(r.prompt.ids[:prefix_len], first) for r in requests):
                prefix_len = 0
            if prefix_len >= 1 and min(lengths) > prefix_len:
                key = (prefix_key, first.tobytes())
                prefix_ms = self._ensure_prefix(key, rows[0][0], rows[0][1], prefix_len)
            else:
                prefix_len, key = 0, None
        else:
            key = None

        width = max(lengths) - prefix_len
        hidden = rows[0][0].shape[1]
        total = prefix_len + width + max_new_tokens
        cache = self._cache(batch, total, key, prefix_len)
        embeds = np.empty((batch, width, hidden), np.float32)
        embeds[:] = self.embed[self.pad_id]
        positions = np.zeros((3, batch, width), np.int64)
        mask = np.zeros((batch, total), np.int64)
        mask[:, :prefix_len] = 1
        deltas = np.zeros(batch, np.int64)
        for b, ((e, pos, delta), n) in enumerate(zip(rows, lengths)):
            pad = width - (n - prefix_len)
            embeds[b, pad:] = e[prefix_len:]
            positions[:, b, pad:] = pos[:, prefix_len:]
            mask[b, prefix_len + pad:prefix_len + width] = 1
            deltas[b] = delta
        t_prefill = time.perf_counter()
        logits = self.backend.forward(embeds, positions, mask[:, :prefix_len + width], cache, prefix_len)
        prefill_ms = (time.perf_counter() - t_prefill) * 1e3 + prefix_ms

        # decode
        t_decode = time.perf_counter()
        length = prefix_len + width  # cache slots in use
        next_pos = np.array(lengths, np.int64) + deltas  # rope position of each row's next token
        generated: list[list[int]] = [[] for _ in range(batch)]
        finish = [""] * batch
        scores = [EmptyMaskScore(self.empty_mask_ids) for _ in range(batch)]
        streams = [self.mask_stream_factory() if (self.mask_stream_factory and stop_on_mask_close) else None
                   for _ in range(batch)]
        # Text is needed per token only to stream it; otherwise one decode at the end gives the same text.
        detoks = [self.tokenizer.detokenizer() if (streams[b] is not None or (stream is not None and batch == 1))
                  else None for b in range(batch)]
        # buffers reused by every single-token step (the backend reads them only during its forward)
        next_ids = np.empty(batch, np.int64)
        step_pos1 = np.empty((3, batch, 1), np.int64)
        constraints = [r.constraint for r in requests]
        forwards = forced_total = 0
        words = (int(logits.shape[1]) + 31) // 32
        allowed = np.full((batch, words), 0xFFFFFFFF, np.uint32) if any(constraints) else None
        previous = None
        while True:
            active = [b for b in range(batch) if not finish[b]]
            if not active:
                break
            if allowed is not None:
                for b in range(batch):
                    c = constraints[b]
                    allowed[b] = c.allowed_words(words) if (c is not None and not finish[b]) else 0xFFFFFFFF
            if self.needs_previous:
                previous = _previous_matrix(generated)
            ids = np.asarray(self.sampler.sample_ids(logits, previous=previous, allowed_mask=allowed), np.int64)
            targets = [s.expected() for s in scores]
            if any(t is not None for t in targets):
                tgt = np.array([t if t is not None else 0 for t in targets], np.int64)
                lps = self._log_softmax_at(logits, tgt)
            next_ids.fill(self.pad_id)
            forced_runs: list[list[int]] = [[] for _ in range(batch)]
            for b in active:
                token = int(ids[b])
                if targets[b] is not None:
                    scores[b].observe(token, float(lps[b]))
                if token in self._eos:
                    finish[b] = "eos"
                    continue
                if constraints[b] is not None:
                    constraints[b].accept(token)
                generated[b].append(token)
                next_ids[b] = token
                chunk = detoks[b].feed(token) if detoks[b] is not None else ""
                if chunk and stream is not None and batch == 1:
                    stream(chunk)
                if streams[b] is not None and chunk:
                    streams[b].feed(chunk.encode("utf-8"))
                    if streams[b].closed:
                        finish[b] = "mask_closed"
                if not finish[b] and constraints[b] is not None:
                    if constraints[b].done:
                        finish[b] = "grammar"
                    elif batch == 1 and self.forced_runs:
                        forced_runs[b] = constraints[b].forced(max_new_tokens - len(generated[b]))
                if not finish[b] and len(generated[b]) >= max_new_tokens:
                    finish[b] = "length"
            if all(finish):
                break
            # forced tokens (batch 1 only): appended now, fed with the sampled token as one multi-token forward
            run = [int(next_ids[0])] + forced_runs[0] if batch == 1 else None
            if run and len(run) > 1:
                b = 0
                for token in forced_runs[0]:
                    scores[b].observe(token, None)
                    constraints[b].accept(token)
                    generated[b].append(token)
                    chunk = detoks[b].feed(token) if detoks[b] is not None else ""
                    if chunk and stream is not None:
                        stream(chunk)
                    if streams[b] is not None and chunk:
                        streams[b].feed(chunk.encode("utf-8"))
                forced_total += len(forced_runs[0])
                if streams[b] is not None and streams[b].closed:
                    finish[b] = "mask_closed"
                elif constraints[b].done:
                    finish[b] = "grammar"
                elif len(generated[b]) >= max_new_tokens:
                    finish[b] = "length"
                if finish[b]:
                    break
                step_ids = np.asarray(run, np.int64)[None, :]
            else:
                step_ids = next_ids[:, None]
            s = step_ids.shape[1]
            if length + s > cache.max_len:
                for b in active:
                    finish[b] = finish[b] or "length"
                break
            if batch * s == 1:  # the common step: a view of one table row, no gather
                token = int(step_ids[0, 0])
                step_embeds = self._table[token:token + 1].reshape(1, 1, hidden)
            else:
                step_embeds = self._table[step_ids.ravel()].reshape(batch, s, hidden)
            if s == 1:
                step_pos1[:, :, 0] = next_pos
                step_pos = step_pos1
            else:
                step_pos = np.empty((3, batch, s), np.int64)
                step_pos[:] = next_pos[:, None] + np.arange(s)
            if step_embeds.dtype != np.float32:
                step_embeds = step_embeds.astype(np.float32)
            mask[:, length:length + s] = 1
            logits = self.backend.forward(step_embeds, step_pos, mask[:, :length + s], cache, length)
            length += s
            next_pos += s
            forwards += 1

        texts = []
        for b in range(batch):
            if detoks[b] is None:
                texts.append(self.tokenizer.decode(generated[b]))
                continue
            rest = detoks[b].flush()
            if rest and stream is not None and batch == 1:
                stream(rest)
            texts.append(detoks[b].text)
        self._last_forwards = forwards
        decode_ms = (time.perf_counter() - t_decode) * 1e3
        total_ms = (time.perf_counter() - t0) * 1e3
        out = []
        for b in range(batch):
            out.append(Generation(
                ids=generated[b], text=texts[b], finish_reason=finish[b] or "length",
                score=scores[b].score, prompt_tokens=lengths[b],
                timings={"prefill": prefill_ms, "decode": decode_ms, "generate": total_ms,
                         "prefix": prefix_ms, "prefix_len": float(prefix_len)},
                forwards=forwards, forced_tokens=forced_total))
        return out


def _previous_matrix(generated: list[list[int]]) -> np.ndarray:
    width = max(1, max(len(g) for g in generated))
    prev = np.full((len(generated), width), -1, np.int64)
    for b, g in enumerate(generated):
        if g:
            prev[b, :len(g)] = g
    return prev
