"""Token sampling: a facade over the native sampler chain (omniad_edge._native).

Chain, llama.cpp style, per row of (B, V) logits::

    repetition penalty -> allowed-token mask -> temperature -> top-k -> top-p -> min-p -> draw

``temperature == 0`` is greedy (argmax after penalty and mask; ties -> lowest id, like numpy.argmax); other
temperatures must be >= 1e-4.

- logits: float32 or float16, C-contiguous, shape (B, V) or (V,) (= one row). Never modified.
- previous: token ids already generated, per row, for the repetition penalty: (B, N) ints, or a list of lists
  (ragged rows are padded with -1, which is ignored). Penalty p: logit > 0 -> logit / p, else logit * p.
- allowed_mask: packed bitmask (B, ceil(V/32)) uint32 or int32 (llguidance's layout: bit i % 32 of word i // 32
  set = token i allowed), or a (B, V) bool array. For (V,) logits a 1-D mask is accepted.
- Returned log-probabilities: of the chosen token under softmax(penalised, masked logits / T) over all allowed
  tokens, *before* top-k/top-p/min-p truncation; for greedy T = 1.
- Seeded: the random state is an ``Rng`` apart from the settings. ``Sampler.new_rng()`` starts one at the sampler's
  seed; ``sample(..., rng=r)`` draws from it. Without ``rng=`` a call draws from the Sampler's own generator, which
  runs on across calls (``reset()`` restarts it). The same seed, settings and inputs repeat the same ids. One draw
  per sampled row; greedy draws nothing.
- Threads: the native sampler is immutable and its scratch buffers are per thread, so one Sampler may be shared by
  any number of threads as long as each passes its own ``rng`` (the Generator starts one per call). The Sampler's
  own generator (calls without ``rng=``) is for one thread.

The native call releases the GIL. Bad input raises TypeError/ValueError naming the argument.
"""
from __future__ import annotations

import numpy as np

from . import _native

__all__ = ["Sampler", "log_softmax_at"]

_U64 = 1 << 64


def _number(name: str, value, kind=float):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if kind is int and float(value) != int(value):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    return kind(value)


def _seed(seed) -> int:
    seed = _number("seed", seed, int)
    if not 0 <= seed < _U64:
        raise ValueError(f"seed must be in 0..2**64-1, got {seed}")
    return seed


def _previous(previous, batch: int):
    """previous -> (B, N) int64 C-contiguous, or None."""
    if previous is None:
        return None
    if isinstance(previous, np.ndarray):
        if previous.dtype.kind not in "iu":
            raise TypeError(f"previous must hold integer token ids, got dtype {previous.dtype}")
        arr = previous
    else:
        rows = list(previous)
        if rows and all(isinstance(r, (list, tuple, np.ndarray)) for r in rows):
            width = max((len(r) for r in rows), default=0)
            arr = np.full((len(rows), width), -1, dtype=np.int64)
            for i, r in enumerate(rows):
                arr[i, : len(r)] = np.asarray(r, dtype=np.int64)
        else:
            arr = np.asarray(rows)
            if arr.size and arr.dtype.kind not in "iu":
                raise TypeError("previous must hold integer token ids")
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[0] != batch:
        raise ValueError(f"previous must have shape ({batch}, N) to match logits, got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _rows(logits, allowed_mask):
    """Batch size of logits, and a 1-D mask lifted to one row for 1-D logits (int32 masks viewed as uint32)."""
    if not isinstance(logits, np.ndarray):
        raise TypeError(f"logits must be a numpy.ndarray, got {type(logits).__name__}")
    batch = logits.shape[0] if logits.ndim == 2 else 1
    if isinstance(allowed_mask, np.ndarray):
        if logits.ndim == 1 and allowed_mask.ndim == 1:
            allowed_mask = allowed_mask.reshape(1, -1)
        if allowed_mask.dtype == np.int32:
            allowed_mask = allowed_mask.view(np.uint32)
    elif allowed_mask is not None:
        raise TypeError(f"allowed_mask must be a numpy.ndarray or None, got {type(allowed_mask).__name__}")
    return batch, allowed_mask


class Sampler:
    """Sampler(temperature=0, top_k=0, top_p=1, min_p=0, repetition_penalty=1, seed=0); see the module docstring."""

    def __init__(self, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                 repetition_penalty: float = 1.0, seed: int = 0):
        self.temperature = _number("temperature", temperature)
        self.top_k = _number("top_k", top_k, int)
        self.top_p = _number("top_p", top_p)
        self.min_p = _number("min_p", min_p)
        self.repetition_penalty = _number("repetition_penalty", repetition_penalty)
        self.seed = _seed(seed)
        if not 0 <= self.top_k < 2**31:
            raise ValueError(f"top_k must be in 0..2**31-1 (0 = off), got {self.top_k}")
        self._native = _native.Sampler(self.temperature, self.top_k, self.top_p, self.min_p,
                                       self.repetition_penalty)
        self._rng = _native.Rng(self.seed)

    def __repr__(self) -> str:
        return (f"Sampler(temperature={self.temperature}, top_k={self.top_k}, top_p={self.top_p}, "
                f"min_p={self.min_p}, repetition_penalty={self.repetition_penalty}, seed={self.seed})")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def reset(self, seed: int | None = None) -> None:
        """Restarts the Sampler's own generator from ``seed`` (default: the constructor's seed)."""
        if seed is not None:
            self.seed = _seed(seed)
        self._rng.reset(self.seed)

    def new_rng(self, seed: int | None = None):
        """A fresh generator started at ``seed`` (default: the sampler's seed), for one sequence or thread."""
        return _native.Rng(self.seed if seed is None else _seed(seed))

    def sample(self, logits: np.ndarray, previous=None, allowed_mask=None, rng=None) -> tuple[np.ndarray, np.ndarray]:
        """-> (ids (B,) int64, logprobs (B,) float32)."""
        batch, allowed_mask = _rows(logits, allowed_mask)
        return self._native.sample(logits, _previous(previous, batch), allowed_mask, True,
                                   self._rng if rng is None else rng)

    def sample_ids(self, logits: np.ndarray, previous=None, allowed_mask=None, rng=None) -> np.ndarray:
        """Like ``sample`` without log-probabilities: greedy is then a single argmax pass."""
        rng = self._rng if rng is None else rng
        if previous is None and allowed_mask is None:  # hot path: the native side checks logits itself
            return self._native.sample(logits, None, None, False, rng)
        batch, allowed_mask = _rows(logits, allowed_mask)
        return self._native.sample(logits, _previous(previous, batch), allowed_mask, False, rng)


def log_softmax_at(logits: np.ndarray, ids, temperature: float = 1.0) -> np.ndarray:
    """log softmax(logits / temperature)[b, ids[b]] per row (no mask, no penalty) -> (B,) float32."""
    batch, _ = _rows(logits, None)
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"ids must hold integer token ids, got dtype {ids.dtype}")
    ids = np.ascontiguousarray(ids.reshape(-1), dtype=np.int64)
    if ids.shape[0] != batch:
        raise ValueError(f"ids must have {batch} entries (one per logits row), got {ids.shape[0]}")
    return _native.log_softmax_at(logits, ids, _number("temperature", temperature))
