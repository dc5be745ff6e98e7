"""Draft tokens for speculative decoding, looked up in the station's earlier outputs.

An inspection station writes nearly the same text frame after frame: `<seg>none</seg>` and one explanation for good
parts, a handful of templates for defects. After each call the generator hands its outputs to `learn`; during a
call `draft` proposes how the output goes on: the continuation that followed the same last 1-3 tokens most
recently, as far as it has been the same in the last two outputs that had them. The generator feeds the sampled
token and the draft in one run, which returns the logits of every position (the decoder's draft_logits output), and
keeps the longest prefix the model itself would have written greedily, so the text is the model's, only with fewer
runs (generate.py, `_speculate`). A wrong draft never changes the text; it costs a longer run than a one-token step,
which is why only text that repeated is drafted.

Written here rather than taken from a library: the lookup is a few dictionary operations (the same idea as
transformers' prompt lookup and llama.cpp's lookup decoding), and it must learn across calls, which theirs do not.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Sequence


class NgramDrafter:
    """Continuations of the last `order`..1 tokens, from the most recent outputs that contained them.

    Each n-gram keeps the continuation that followed it last and how many of its tokens the two latest outputs
    agreed on: only those are drafted (`first` of them while the n-gram has been seen once). Text that varies from
    frame to frame (the mask's rows, a defect's position) is so not drafted at all, where a wrong draft would cost
    a longer run for nothing; text that repeats is drafted whole. On the reference model, 400 test frames, `first`
    2 / 4 / 8 / 16 (all) gave defective frames a median decode of 0.64x / 0.65x / 0.65x / 0.70x plain decoding's,
    and good frames 0.29-0.32x whatever `first` (benchmarks/results/speculative-reference-explain{-first2,,-first8,
    -first16}.md); 4 is kept.

    Thread-safe: calls of one Inspector on several threads learn and draft through one lock (microseconds).
    Memory: at most `max_keys` n-grams per order, least recently seen dropped first.
    """

    def __init__(self, order: int = 3, length: int = 16, max_keys: int = 4096, first: int = 4):
        if min(order, length, max_keys, first) < 1:
            raise ValueError(f"order, length, max_keys and first must be >= 1, got {order}, {length}, {max_keys}, "
                             f"{first}")
        self.order = order
        self.length = length
        self.first = first
        self.max_keys = max_keys
        # [n - 1]: n-gram -> (continuation, tokens of it the two latest sightings agreed on; -1: seen once)
        self._tables: list[OrderedDict] = [OrderedDict() for _ in range(order)]
        self._lock = threading.Lock()

    def learn(self, ids: Sequence[int]) -> None:
        """Remembers one finished output: what followed each of its n-grams."""
        ids = tuple(int(t) for t in ids)
        with self._lock:
            for n, table in enumerate(self._tables, start=1):
                seen = set()
                for i in range(len(ids) - n):
                    key = ids[i:i + n]
                    if key in seen:  # within one output the first sighting counts (the others follow it)
                        continue
                    seen.add(key)
                    follow = ids[i + n:i + n + self.length]
                    before = table.get(key)
                    table[key] = (follow, -1 if before is None else _common_prefix(before[0], follow))
                    table.move_to_end(key)
                while len(table) > self.max_keys:
                    table.popitem(last=False)

    def draft(self, ids: Sequence[int], limit: int) -> list[int]:
        """Up to `limit` tokens that follow the longest known suffix of `ids` ([] when none is known or its
        continuation varies)."""
        if limit < 1 or not ids:
            return []
        with self._lock:
            for n in range(min(self.order, len(ids)), 0, -1):
                found = self._tables[n - 1].get(tuple(ids[-n:]))
                if found is not None:
                    follow, agreed = found
                    return list(follow[:min(limit, self.first if agreed < 0 else agreed)])
        return []

    def clear(self) -> None:
        with self._lock:
            for table in self._tables:
                table.clear()


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
