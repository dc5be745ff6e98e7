"""Prefill + decode loop: embeddings, mrope positions, prefix cache, left-padded batches, stop conditions, score.

Prefill gathers token embeddings from the bundle's embed_tokens table (memory-mapped), writes the image embeddings
over the image-pad rows and runs the prompt in one forward. A prefix that does not depend on the query frame
(system prompt + reference images) is prefilled once per key into a shared, read-only cache; each call's working
cache copies it (only when it last held another prefix), so each frame only prefills its own suffix.

Structure: `_prefill` (the prompts, left-padded, one forward) and `_decode` (sample, accept, feed back) share two
helpers: `_accept` appends one token to a row, sampled or grammar-forced (score, grammar, text, stop conditions),
and `_feed_tokens` runs token ids through the decoder at each row's next positions.

Native loop: a backend with a compiled decode step (`native_step(cache)`, the ONNX Runtime backend on the CPU)
feeds tokens without Python, and once no row needs Python per token (no grammar, no streamed text, no pending
answer probe, no repetition penalty) `_native_loop` hands it the rest of the call: sample, the empty-mask score,
end-of-sequence, Text-as-Mask stop and length checks and the next forward, all native, in the same order as
`_decode` and `_accept`, so the tokens are the same as the Python loop's. The Text-as-Mask stop (detect mode) runs
natively over the tokens' bytes (`Tokenizer.token_text`, byte-level tokenizers) feeding the row's own native
stream decoder; a token whose text the detokenizer could hold back (part of a character) hands that step back to
Python. What stays in Python per token, and why: grammar rows (llguidance's matcher has no C interface the step
could call), a stream callback (the caller's Python code), a repetition penalty (the previous-ids matrix) and a
pending answer probe (one step, then the loop goes native).

Speculative decoding (`_speculate`, with a drafter such as drafting.NgramDrafter and a decoder that returns draft
logits): each run feeds the token just taken and a guess of the tokens after it; the run's logits at every position
give the model's own greedy picks, taken one by one through `_accept` while they equal the guess, and the cache is cut
back to the tokens taken (slots past the length are rewritten by the next run). Only where it is exact: greedy, batch
1, no grammar, no repetition penalty; the native loop is not used then (each pick needs the drafter's answer).

Score: the probability that the model writes the empty mask, P(E) with E = tokens of open_tag + encode(empty
grid), accumulated from the same logits the decoder samples from while the output follows E. When the output
leaves E at step j, the score uses P(E[:j+1]) (the model's probability of staying on the empty text there), an upper
bound of P(E) that needs no extra forward; when the output is E, it is P(E) exactly. score = 1 - that probability,
continuous in [0, 1], so AUROC needs no threshold on the text. It becomes `Inspection.anomaly_probability`;
`Inspection.score` is put on the verdict's side of 0.5 (inspection.verdict_score), which the greedy text may not be.

Answer-only models (think + answer, no mask) have no empty-mask text; their score is the model's own
P(anomalous answer) / P(any answer) at the token where the answer starts (`AnswerProbe`), read from the logits the
decoder samples from there: no extra forward.
"""
from __future__ import annotations

import math
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .errors import PositionError
from .positions import rope_positions
from .prompt import Prompt


@dataclass
class Request:
    """One sequence to generate: its prompt, image embeddings (per image, prompt order) and image grids."""

    prompt: Prompt
    image_embeds: Sequence[np.ndarray]
    grids: Sequence[tuple[int, int, int]]
    constraint: object | None = None  # grammar.Constraint for this row
    answer_lead_in_prompt: bool = False  # the prompt ends with the AnswerProbe's lead: the answer starts at once


@dataclass
class Generation:
    ids: list[int]
    text: str
    finish_reason: str  # eos | length | mask_closed | grammar
    score: float | None
    prompt_tokens: int
    timings: dict[str, float] = field(default_factory=dict)  # ms: prefill, decode
    forwards: int = 0  # decoder runs after the prefill (forced-token and draft-checking runs count once)
    forced_tokens: int = 0
    drafted_tokens: int = 0  # tokens drafted into runs (speculative decoding) ...
    accepted_drafts: int = 0  # ... and those the model's own greedy pick confirmed
    answer_score: float | None = None  # answer-only models: P(anomalous answer) where the answer starts


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


@dataclass(frozen=True)
class AnswerProbe:
    """Where an answer-only model states its verdict: right after `lead` (the token ids that open the answer, as
    the tokenizer writes them before any answer), the first token of each spelling of the anomalous and the normal
    answer."""

    lead: tuple[int, ...]
    anomalous: tuple[int, ...]
    normal: tuple[int, ...]


class AnswerScore:
    """P(anomalous) / (P(anomalous) + P(normal)) over the answers' first tokens, once, where the answer starts."""

    def __init__(self, probe: AnswerProbe, lead_in_prompt: bool):
        self.probe = probe
        self.lead_in_prompt = lead_in_prompt
        self.score: float | None = None
        self.done = False
        self._ids = np.array(probe.anomalous + probe.normal, np.int64)

    def due(self, generated: list[int]) -> bool:
        """The next token starts the answer: the lead ended the prompt, or the output just wrote it."""
        if self.done:
            return False
        if self.lead_in_prompt:
            return not generated
        n = len(self.probe.lead)
        return n > 0 and len(generated) >= n and tuple(generated[-n:]) == self.probe.lead

    def observe(self, logits_row: np.ndarray) -> None:
        self.done = True
        picked = logits_row[self._ids].astype(np.float64)
        if not np.isfinite(picked).all():  # a broken step gives no score, never a made-up one
            return
        p = np.exp(picked - picked.max())
        k = len(self.probe.anomalous)
        self.score = float(p[:k].sum() / p.sum())


@dataclass(frozen=True)
class _Prefix:
    """The prefilled KV of a prefix (system prompt + references): shared, read-only once built."""

    key: object
    length: int
    cache: object  # batch-1 cache holding slots [0, length)


@dataclass
class _Slot:
    """A working KV cache checked out of the pool, and the prefix its first slots hold (None: not a known one)."""

    cache: object
    prefix: _Prefix | None = None


@dataclass
class _Row:
    """One sequence's decode state."""

    score: EmptyMaskScore
    constraint: object | None
    mask_stream: object | None  # Text-as-Mask stream decoder: the row stops when the mask block closes
    detok: object | None  # incremental detokenizer, only when text is needed per token
    answer: AnswerScore | None = None  # answer-only models
    generated: list[int] = field(default_factory=list)
    finish: str = ""


@dataclass
class _Call:
    """Per-call state of one generate(): never shared between threads."""

    rows: list[_Row]
    cache: object
    mask: np.ndarray  # (batch, cache slots) attention mask
    length: int  # cache slots in use
    next_pos: np.ndarray  # rope position of each row's next token
    max_new_tokens: int
    emit: Callable[[str], None] | None  # the caller's stream callback (batch 1 only)
    rng: object | None  # the sampler's generator for this call (None: greedy)
    step_pos: np.ndarray  # (3, batch, 1) positions buffer reused by every single-token step
    native: object | None = None  # the backend's compiled step for this call's cache (None: Python feeding)
    loop: "_LoopArrays | None" = None  # the native loop's state, prepared before the prefill when it runs it all
    done: tuple | None = None  # (state, steps, forwards) of a native loop that ended the call, not yet read back
    forwards: int = 0
    forced: int = 0
    drafted: int = 0
    accepted: int = 0


@dataclass
class _LoopArrays:
    """The native loop's per-row state and outputs (the arrays DecodeStep.prepare binds), from the rows' state."""

    finish: np.ndarray
    generated: np.ndarray
    score_pos: np.ndarray
    score_logp: np.ndarray
    out: np.ndarray  # (steps, batch) ids appended per step, -1 none
    timings: np.ndarray | None  # (steps, 2) feed / run ns when the backend's on_forward hook is set
    streams: list | None  # per row: its native Text-as-Mask stream decoder, or None
    length: int  # the cache length the loop was bound to start at


class Generator:
    """The decode engine over a backend: prefill, then decode with stop conditions and the empty-mask score.

    Threads: one Generator may be shared by any number of threads when the backend is `concurrent` (ONNX Runtime).
    Shared, read-only during calls: bundle, backend sessions, embedding table, sampler settings, the prefilled
    reference prefix. Per call: a working KV cache checked out of a pool (the backend keeps its IO binding and
    logits buffer with it) and given back after the call, the sampler's generator, the step buffers and the row
    states; so results do not depend on what other threads run. A backend that is not concurrent gets its calls
    serialised (`exclusive`).
    """

    def __init__(self, backend, bundle, tokenizer, sampler, *, empty_mask_ids: Sequence[int] = (),
                 mask_stream_factory: Callable[[], object] | None = None, prefix_cache: bool = True,
                 needs_previous: bool = False, answer_probe: AnswerProbe | None = None, drafter=None):
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
        # positions the decoder can take: a fused decoder's rotary tables end at rotary_positions
        self.max_position = min(int(bundle.model.get("max_position", 1 << 30)),
                                int(bundle.graphs["decoder"].get("rotary_positions", 1 << 30)))
        self.empty_mask_ids = list(empty_mask_ids)
        self.answer_probe = answer_probe
        self.mask_stream_factory = mask_stream_factory
        self.prefix_cache = prefix_cache
        self.needs_previous = needs_previous  # repetition penalty: the sampler needs the generated ids
        self.forced_runs = True  # feed grammar-forced tokens as one multi-token forward (batch 1)
        # speculative decoding (drafting.NgramDrafter): used where the decoder returns draft logits (an export
        # with the draft_logits output) and the call is greedy, batch 1 and without grammar (_speculative)
        self.drafter = drafter if getattr(backend, "draft_positions", 0) > 0 else None
        # Held by every call when the backend cannot run calls at once; the Inspector takes it around vision too.
        self.exclusive = nullcontext() if getattr(backend, "concurrent", False) else threading.RLock()
        self._lock = threading.Lock()  # guards the pool
        self._prefill_lock = threading.Lock()  # one prefix prefill at a time
        # the compiled step gathers float32 / float16 tables itself; any other dtype is converted in Python
        native_table = self._table.dtype in (np.float32, np.float16) and self._table.flags.c_contiguous
        self._native_step = getattr(backend, "native_step", None) if native_table else None
        self._score_target = np.array(self.empty_mask_ids or [0], np.int64)
        self._token_text = None  # the native Text-as-Mask stop's token bytes, made on first need (_text_table)
        self._token_text_lock = threading.Lock()
        self._prefix: _Prefix | None = None
        self._pool: dict[int, list[_Slot]] = {}  # batch -> idle working caches
        self._last_forwards = 0  # forwards of the latest call (diagnostics of single-thread runs)

    # -- shared state: prefix and the pool of working caches ---------------------------------------------------
    def _ensure_prefix(self, key, embeds: np.ndarray, positions: np.ndarray, length: int) -> tuple[_Prefix, float]:
        """The prefix KV for key, prefilled once (other threads wait for it); -> (prefix, ms spent, 0 on a hit)."""
        prefix = self._prefix
        if prefix is not None and prefix.key == key and prefix.length == length:
            return prefix, 0.0
        with self._prefill_lock:
            prefix = self._prefix
            if prefix is not None and prefix.key == key and prefix.length == length:
                return prefix, 0.0
            start = time.perf_counter()
            source = self.backend.new_cache(1, length)
            self.backend.forward(embeds[None, :length], positions[:, None, :length], np.ones((1, length), np.int64),
                                 source, 0)
            self._prefix = prefix = _Prefix(key, length, source)
            return prefix, (time.perf_counter() - start) * 1e3

    def _checkout(self, batch: int, length: int, prefix: _Prefix | None) -> _Slot:
        """A working cache of at least `length` slots whose first slots hold `prefix`."""
        with self._lock:
            free = self._pool.get(batch, [])
            slot = next((s for s in reversed(free) if s.cache.max_len >= length), None)
            if slot is not None:
                free.remove(slot)
            elif free:
                free.pop()  # too small for this call: replaced by a larger one below
        if slot is None:
            slot = _Slot(self.backend.new_cache(batch, max(length, 64)))
        if prefix is None:
            slot.prefix = None  # this call writes from slot 0
        elif slot.prefix is not prefix:
            slot.cache.copy_prefix(prefix.cache, prefix.length)
            slot.prefix = prefix
        return slot

    def _checkin(self, batch: int, slot: _Slot) -> None:
        with self._lock:
            free = self._pool.setdefault(batch, [])
            if len(free) < _POOL_PER_BATCH:
                free.append(slot)

    # -- one call ----------------------------------------------------------------------------------------------
    def generate(self, requests: Sequence[Request], *, max_new_tokens: int, stop_on_mask_close: bool = False,
                 stream: Callable[[str], None] | None = None, prefix_key=None) -> list[Generation]:
        if not requests:
            return []
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        with self.exclusive:
            return self._generate(requests, max_new_tokens, stop_on_mask_close, stream, prefix_key)

    def _generate(self, requests, max_new_tokens, stop_on_mask_close, stream, prefix_key) -> list[Generation]:
        batch = len(requests)
        t0 = time.perf_counter()
        rows = []
        for r in requests:
            pos, delta = rope_positions(r.prompt.ids, list(r.grids), self.tokens, self.merge)
            # the last token fed back (the one before the budget's last) sits at len + delta + max_new_tokens - 2
            top = max(int(pos.max()), len(r.prompt) + int(delta) + max_new_tokens - 2)
            if top >= self.max_position:
                raise PositionError(f"the prompt ({len(r.prompt)} tokens) and max_new_tokens={max_new_tokens} need "
                                    f"position {top}; {self.bundle.name}'s decoder covers positions below "
                                    f"{self.max_position}: lower max_new_tokens or the prompt's images")
            rows.append((self._embeddings(r), pos, delta))
        lengths = [len(r.prompt) for r in requests]
        prefix, prefix_ms = self._shared_prefix(requests, rows, lengths, prefix_key)
        prefix_len = prefix.length if prefix is not None else 0
        width = max(lengths) - prefix_len
        total = prefix_len + width + max_new_tokens
        slot = self._checkout(batch, total, prefix)
        try:
            call = self._start(requests, slot.cache, total, prefix_len, [d for _, _, d in rows], lengths,
                               max_new_tokens, stop_on_mask_close, stream)
            t_prefill = time.perf_counter()
            logits = self._prefill(call, rows, lengths, prefix_len, width)
            prefill_ms = (time.perf_counter() - t_prefill) * 1e3 + prefix_ms
            t_decode = time.perf_counter()
            self._decode(call, logits)
            decode_ms = (time.perf_counter() - t_decode) * 1e3
            # a native loop that ended the call left its results in arrays: the rows take them now, with the text
            t_read = time.perf_counter()
            if call.done is not None:
                self._read_back(call, *call.done, handed_back=False)
            read_back_ms = (time.perf_counter() - t_read) * 1e3
        finally:
            self._checkin(batch, slot)
        if self.drafter is not None:
            for row in call.rows:
                self.drafter.learn(row.generated)
        texts = []
        for row in call.rows:
            if row.detok is None:
                texts.append(self.tokenizer.decode(row.generated))
                continue
            rest = row.detok.flush()
            if rest and call.emit is not None:
                call.emit(rest)
            texts.append(row.detok.text)
        self._last_forwards = call.forwards
        total_ms = (time.perf_counter() - t0) * 1e3
        return [Generation(ids=row.generated, text=text, finish_reason=row.finish or "length",
                           score=row.score.score, prompt_tokens=n,
                           answer_score=None if row.answer is None else row.answer.score,
                           timings={"prefill": prefill_ms, "decode": decode_ms, "generate": total_ms,
                                    "prefix": prefix_ms, "prefix_len": float(prefix_len),
                                    "read_back": read_back_ms},
                           forwards=call.forwards, forced_tokens=call.forced, drafted_tokens=call.drafted,
                           accepted_drafts=call.accepted)
                for row, text, n in zip(call.rows, texts, lengths)]

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

    def _shared_prefix(self, requests, rows, lengths, prefix_key) -> tuple[_Prefix | None, float]:
        """The prefix every row shares (same references), when the caller names it and it is non-trivial."""
        if not self.prefix_cache or prefix_key is None:
            return None, 0.0
        prefix_len = min(r.prompt.prefix_len for r in requests)
        first = requests[0].prompt.ids[:prefix_len]
        if any(not np.array_equal(r.prompt.ids[:prefix_len], first) for r in requests):
            return None, 0.0
        if prefix_len < 1 or min(lengths) <= prefix_len:
            return None, 0.0
        return self._ensure_prefix((prefix_key, first.tobytes()), rows[0][0], rows[0][1], prefix_len)

    def _start(self, requests, cache, total, prefix_len, deltas, lengths, max_new_tokens, stop_on_mask_close,
               stream) -> _Call:
        batch = len(requests)
        streaming = self.mask_stream_factory is not None and stop_on_mask_close
        emit = stream if batch == 1 else None
        rows = []
        for r in requests:
            mask_stream = self.mask_stream_factory() if streaming else None
            # Text is needed per token only to stream it; otherwise one decode at the end gives the same text.
            detok = self.tokenizer.detokenizer() if (mask_stream is not None or emit is not None) else None
            answer = None if self.answer_probe is None else AnswerScore(self.answer_probe, r.answer_lead_in_prompt)
            rows.append(_Row(EmptyMaskScore(self.empty_mask_ids), r.constraint, mask_stream, detok, answer))
        mask = np.zeros((batch, total), np.int64)
        mask[:, :prefix_len] = 1
        rng = None if self.sampler.greedy else self.sampler.new_rng()
        call = _Call(rows=rows, cache=cache, mask=mask, length=prefix_len,
                     next_pos=np.array(lengths, np.int64) + np.asarray(deltas, np.int64),
                     max_new_tokens=max_new_tokens, emit=emit, rng=rng,
                     step_pos=np.empty((3, batch, 1), np.int64),
                     native=None if self._native_step is None else self._native_step(cache))
        if call.native is not None and not self._speculative(call) and self._native_ready(call):
            # every row can run native from its first token: the loop is bound now, so the decode phase starts with
            # one argument-free native call (right after the prefill's run Python runs with cold caches)
            self._prepare_loop(call, max(lengths))  # the cache length after the prefill
        return call

    def _prefill(self, call: _Call, rows, lengths, prefix_len: int, width: int) -> np.ndarray:
        """The prompts after the prefix, left-padded to one width, in one forward; -> logits of the last position."""
        batch = len(rows)
        hidden = rows[0][0].shape[1]
        embeds = np.empty((batch, width, hidden), np.float32)
        embeds[:] = self.embed[self.pad_id]
        positions = np.zeros((3, batch, width), np.int64)
        for b, ((e, pos, _), n) in enumerate(zip(rows, lengths)):
            pad = width - (n - prefix_len)
            embeds[b, pad:] = e[prefix_len:]
            positions[:, b, pad:] = pos[:, prefix_len:]
            call.mask[b, prefix_len + pad:prefix_len + width] = 1
        return self._forward(call, embeds, positions)

    def _decode(self, call: _Call, logits: np.ndarray) -> None:
        """Sample, feed the tokens back, until every row has finished."""
        if self._speculative(call):
            self._speculate(call, logits)
            return
        sampled = None  # ids the native loop sampled for a step it handed back
        if call.loop is not None:  # prepared in _start: every row runs native from its first token
            sampled = self._native_loop(call, logits)
            if sampled is None:
                return
            logits = call.native.logits
        batch = len(call.rows)
        rows = call.rows
        words = (int(logits.shape[1]) + 31) // 32
        allowed = np.full((batch, words), 0xFFFFFFFF, np.uint32) if any(r.constraint for r in rows) else None
        previous = None
        next_ids = np.empty(batch, np.int64)  # reused by every step (the backend reads it only during forward)
        while True:
            active = [b for b in range(batch) if not rows[b].finish]
            if not active:
                return
            if sampled is None and call.native is not None and allowed is None and self._native_ready(call):
                sampled = self._native_loop(call, logits)
                if sampled is None:
                    return
                logits = call.native.logits
                continue
            if allowed is not None:
                for b, row in enumerate(rows):
                    live = row.constraint is not None and not row.finish
                    allowed[b] = row.constraint.allowed_words(words) if live else 0xFFFFFFFF
            if self.needs_previous:
                previous = _previous_matrix([row.generated for row in rows])
            if sampled is not None:
                ids, sampled = sampled, None
            else:
                ids = self.sampler.sample_ids(logits, previous=previous, allowed_mask=allowed, rng=call.rng)
            targets = [row.score.expected() for row in rows]
            lps = None
            if any(t is not None for t in targets):
                lps = self._log_softmax_at(logits, np.array([t or 0 for t in targets], np.int64))
            next_ids.fill(self.pad_id)
            for b in active:
                answer = rows[b].answer
                if answer is not None and answer.due(rows[b].generated):
                    answer.observe(logits[b])
                token = int(ids[b])
                if self._accept(call, rows[b], token, float(lps[b]) if targets[b] is not None else None, True):
                    next_ids[b] = token
            if all(row.finish for row in rows):
                return
            run = next_ids[:, None]
            if batch == 1 and self.forced_runs and rows[0].constraint is not None:
                # tokens the grammar forces: appended now, fed with the sampled token as one multi-token forward
                row = rows[0]
                forced = []
                for token in row.constraint.forced(call.max_new_tokens - len(row.generated)):
                    self._accept(call, row, token, None, False)
                    forced.append(token)
                    if row.finish:
                        return
                if forced:
                    call.forced += len(forced)
                    run = np.asarray([int(next_ids[0])] + forced, np.int64)[None, :]
            if call.length + run.shape[1] > call.cache.max_len:
                for row in rows:
                    row.finish = row.finish or "length"
                return
            logits = self._feed_tokens(call, run)

    def _speculative(self, call: _Call) -> bool:
        """Drafts can be checked exactly: greedy picks, one row, no grammar or repetition penalty (whose state a
        rejected draft would have to undo)."""
        return (self.drafter is not None and len(call.rows) == 1 and call.rng is None and self.sampler.greedy
                and not self.needs_previous and call.rows[0].constraint is None)

    def _speculate(self, call: _Call, logits: np.ndarray) -> None:
        """The decode phase with drafts: each run feeds the token just taken and the drafter's guess of what
        follows; its logits at every position give the model's own greedy picks, which are taken while they equal
        the draft. The cache is then cut back to the tokens taken, so the text is the one plain decoding writes
        (up to float rounding between a one-token and a multi-token run, as between thread counts)."""
        row = call.rows[0]
        room = int(self.backend.draft_positions)
        drafts: list[int] = []
        picks = [logits]  # logits rows to take tokens from, in order: one per draft, then the run's last
        while True:
            for i, pick in enumerate(picks):
                token = self._take(call, row, pick)
                confirmed = i < len(drafts) and token == drafts[i]
                call.accepted += confirmed
                if row.finish:
                    return
                if not confirmed:
                    break
            unused = len(drafts) - i  # the run's entries after the last token taken
            if unused:
                call.length -= unused
                call.mask[:, call.length:call.length + unused] = 0
                call.next_pos -= unused
            budget = min(room, call.max_new_tokens - len(row.generated) - 1,
                         call.cache.max_len - call.length - 1)
            if budget < 0:  # no slot left for even the token taken
                row.finish = "length"
                return
            drafts = self.drafter.draft(row.generated, budget)
            call.drafted += len(drafts)
            run = np.asarray([[token, *drafts]], np.int64)
            if drafts:
                draft = np.empty((1, len(drafts), int(logits.shape[1])), np.float32)
                last = self._feed_tokens(call, run, draft)
                picks = [draft[0, j:j + 1] for j in range(len(drafts))] + [last]
            else:
                picks = [self._feed_tokens(call, run)]

    def _take(self, call: _Call, row: _Row, logits: np.ndarray) -> int:
        """One greedy token from logits (1, vocab) for a batch-1 row, with its score and answer probe (as in
        `_decode`), appended by `_accept`."""
        token = int(self.sampler.sample_ids(logits, rng=call.rng)[0])
        target = row.score.expected()
        logp = None
        if target is not None:
            logp = float(self._log_softmax_at(logits, np.array([target], np.int64))[0])
        if row.answer is not None and row.answer.due(row.generated):
            row.answer.observe(logits[0])
        self._accept(call, row, token, logp, True)
        return token

    def _native_ready(self, call: _Call) -> bool:
        """No row needs Python per token from here on (what `_accept` would do beyond score, eos, the Text-as-Mask
        stop and length)."""
        if self.needs_previous or call.emit is not None:
            return False
        for row in call.rows:
            if row.finish:
                continue
            if row.constraint is not None or (row.answer is not None and not row.answer.done):
                return False
            if row.mask_stream is not None:
                # the native stop reads the tokens' bytes: it starts where the detokenizer holds nothing back
                if row.detok is None or row.detok.holding or self._text_table() is None:
                    return False
            elif row.detok is not None:
                return False
        return True

    def _text_table(self):
        """The tokens' bytes for the native Text-as-Mask stop (None: the tokenizer is not byte-level)."""
        if self._token_text is None:
            with self._token_text_lock:
                if self._token_text is None:
                    from ._native import TokenText

                    table = self.tokenizer.token_text(int(self._table.shape[0]))
                    self._token_text = False if table is None else TokenText(*table)
        return self._token_text or None

    def _prepare_loop(self, call: _Call, length: int) -> None:
        """Binds the native loop to the call's state, to start at cache length `length` (call.loop)."""
        state = call.loop = self._loop_arrays(call, length)
        call.native.prepare(self.sampler._native, call.rng, self.eos, self.pad_id, call.max_new_tokens,
                            self._score_target, state.finish, state.generated, state.score_pos, state.score_logp,
                            self._table, call.next_pos, call.mask, length, state.out, state.timings, state.streams,
                            self._token_text or None)

    def _loop_arrays(self, call: _Call, length: int) -> _LoopArrays:
        rows = call.rows
        finish = np.array([1 if row.finish else 0 for row in rows], np.uint8)
        generated = np.array([len(row.generated) for row in rows], np.int64)
        steps = int(max(call.max_new_tokens - generated[finish == 0]))
        streams = None
        if any(row.mask_stream is not None for row in rows):
            streams = [None if row.finish or row.mask_stream is None else row.mask_stream.native for row in rows]
        return _LoopArrays(
            finish=finish, generated=generated,
            score_pos=np.array([row.score.pos if row.score.active else -1 for row in rows], np.int64),
            score_logp=np.array([row.score.logp for row in rows], np.float64),
            out=np.empty((steps, len(rows)), np.int64),
            timings=np.zeros((steps, 2), np.int64) if getattr(self.backend, "on_forward", None) else None,
            streams=streams, length=length)

    def _native_loop(self, call: _Call, logits: np.ndarray) -> np.ndarray | None:
        """The rest of the call in the backend's compiled loop.
        -> None (every row finished; `generate` reads the rows' state back after the decode phase), or the ids
        sampled for a step the loop handed back (a token whose text a row's detokenizer must take; the rows' state
        is read back now), which the caller then finishes in Python."""
        if logits is not call.native.logits:  # the loop samples from the step's own buffer
            np.copyto(call.native.logits, logits)
        if call.loop is None or call.loop.length != call.length:
            self._prepare_loop(call, call.length)
        state, call.loop = call.loop, None
        done, forwards, handed_back = call.native.resume()
        call.length += forwards
        call.forwards += forwards
        if not handed_back:
            # Every row has finished: the decode phase ends here. The rows take the results after it (generate,
            # with the text), as Python right after a run costs ~10 us a statement while its caches refill.
            call.done = (state, done, forwards)
            return None
        self._read_back(call, state, done, forwards, handed_back=True)
        return state.out[done].copy()

    def _read_back(self, call: _Call, state: _LoopArrays, done: int, forwards: int, handed_back: bool) -> None:
        """The rows' state from the native loop's arrays (`done` steps, `forwards` runs taken)."""
        call.done = None
        finish, score_pos, score_logp = state.finish.tolist(), state.score_pos.tolist(), state.score_logp.tolist()
        for b, (row, ids) in enumerate(zip(call.rows, state.out[:done].T.tolist())):
            if row.finish:
                continue
            new = [t for t in ids if t >= 0]
            row.generated.extend(new)
            if row.detok is not None:
                if handed_back or row.detok.ids:  # Python goes on with this detokenizer: it takes the tokens too
                    for token in new:
                        row.detok.feed(token)
                else:  # only native tokens: the row's text is decoded once at the end, as for rows without one
                    row.detok = None
            row.finish = _FINISH[finish[b]]
            row.score.logp = score_logp[b]
            row.score.active = score_pos[b] >= 0
            if row.score.active:
                row.score.pos = score_pos[b]
        hook = getattr(self.backend, "on_forward", None)
        if hook is not None and state.timings is not None:
            for feed_ns, run_ns in state.timings[:forwards]:
                hook(1, feed_ns * 1e-9, run_ns * 1e-9)

    # -- token feeding -----------------------------------------------------------------------------------------
    def _accept(self, call: _Call, row: _Row, token: int, logp_target: float | None, sampled: bool) -> bool:
        """Appends one token to a row, sampled or forced: empty-mask score, grammar, text, stop conditions.
        False: the token ended the row without being appended (end of sequence)."""
        row.score.observe(token, logp_target)
        if sampled and token in self._eos:
            row.finish = "eos"
            return False
        if row.constraint is not None:
            row.constraint.accept(token)
        row.generated.append(token)
        chunk = row.detok.feed(token) if row.detok is not None else ""
        if chunk:
            if call.emit is not None:
                call.emit(chunk)
            if row.mask_stream is not None:
                row.mask_stream.feed(chunk.encode("utf-8"))
                if row.mask_stream.closed:
                    row.finish = "mask_closed"
                    return True
        if row.constraint is not None and row.constraint.done:
            row.finish = "grammar"
        elif len(row.generated) >= call.max_new_tokens:
            row.finish = "length"
        return True

    def _feed_tokens(self, call: _Call, ids: np.ndarray, draft: np.ndarray | None = None) -> np.ndarray:
        """Token ids (batch, s) at each row's next positions -> logits after the last of them; draft
        (batch, s - 1, vocab) receives the logits after each of the others."""
        batch, s = ids.shape
        if call.native is not None:
            return self._feed_native(call, np.ascontiguousarray(ids, np.int64), draft)
        hidden = self._table.shape[1]
        if batch * s == 1:  # the common step: a view of one table row, no gather
            token = int(ids[0, 0])
            embeds = self._table[token:token + 1].reshape(1, 1, hidden)
        else:
            embeds = self._table[ids.ravel()].reshape(batch, s, hidden)
        if embeds.dtype != np.float32:
            embeds = embeds.astype(np.float32)
        if s == 1:
            positions = call.step_pos
            positions[:, :, 0] = call.next_pos
        else:
            positions = np.empty((3, batch, s), np.int64)
            positions[:] = call.next_pos[:, None] + np.arange(s)
        call.mask[:, call.length:call.length + s] = 1
        logits = self._forward(call, embeds, positions, draft)
        call.next_pos += s
        call.forwards += 1
        return logits

    def _feed_native(self, call: _Call, ids: np.ndarray, draft: np.ndarray | None = None) -> np.ndarray:
        """_feed_tokens through the compiled step: embeddings, positions, mask and the run in one native call."""
        hook = getattr(self.backend, "on_forward", None)
        started = time.perf_counter() if hook is not None else 0.0
        step = call.native
        step.feed(self._table, ids, call.next_pos, call.mask, call.length, draft)
        call.length += ids.shape[1]
        call.forwards += 1
        if hook is not None:
            hook(ids.shape[1], time.perf_counter() - started, step.last_run_ns * 1e-9)
        return step.logits

    def _forward(self, call: _Call, embeds: np.ndarray, positions: np.ndarray,
                 draft: np.ndarray | None = None) -> np.ndarray:
        """One decoder run on the call's cache at its current length; the cache length advances."""
        s = embeds.shape[1]
        mask = call.mask[:, :call.length + s]
        if draft is None:  # backends without draft logits take the five arguments only
            logits = self.backend.forward(embeds, positions, mask, call.cache, call.length)
        else:
            logits = self.backend.forward(embeds, positions, mask, call.cache, call.length, draft)
        call.length += s
        return logits


_FINISH = ("", "eos", "length", "mask_closed")  # the native loop's finish codes (ort_decoder.hpp, LoopState)
_POOL_PER_BATCH = 16  # idle working caches kept per batch size (one per thread that ran at once, usually)


def _previous_matrix(generated: list[list[int]]) -> np.ndarray:
    width = max(1, max(len(g) for g in generated))
    prev = np.full((len(generated), width), -1, np.int64)
    for b, g in enumerate(generated):
        if g:
            prev[b, :len(g)] = g
    return prev
