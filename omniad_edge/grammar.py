"""Constrained output (constrain=True): the manifest's output grammar compiled for llguidance.

The grammar follows the manifest's `output` section: the blocks in `order`, each wrapped in its tags; the mask block
in the codec's syntax (compact: `none` or `;`-separated rows of `row-letter [label:] run-letters`; rle: Text4Seg's
`label *count` runs joined by `| `, rows by newlines), the explanation as free text without `<`, the answer one of
the manifest's answers (or the option letters for `ask`). Tags that are special tokens of the tokenizer are
referenced by token id, so the grammar works whether the tags were added as special tokens or are plain text.

The sampler gets llguidance's allowed-token bitmask (packed uint32, the layout the native sampler takes); where the
grammar leaves a single continuation (tags, the closing of a block) the forced tokens are returned by
`Constraint.forced()` so the generator feeds them in one multi-token forward instead of one model step each.
llguidance is imported lazily (PyPI `llguidance`, extra `grammar`).
"""
from __future__ import annotations

import json
from typing import Sequence

import numpy as np

from .errors import OmniADError


class GrammarError(OmniADError, ValueError):
    """The output grammar cannot be built or used (llguidance missing, invalid manifest grammar)."""


def _llguidance():
    try:
        import llguidance
    except ImportError as exc:
        raise GrammarError(f"constrain=True needs llguidance ({exc}); pip install omniad-edge[grammar]") from None
    return llguidance


def _lit(text: str) -> str:
    return json.dumps(text)  # a Lark string literal (JSON escaping is valid there)


def mask_rules(mask_spec: dict) -> str:
    """Lark rules `mask: ...` for the codec in the manifest's output.mask section."""
    codec = mask_spec.get("codec", "compact")
    grid = int(mask_spec["grid"])
    labels = list(mask_spec["labels"])
    background = int(mask_spec.get("background", 0))
    if codec == "compact":
        if not 1 <= grid <= 26:
            raise GrammarError(f"output.mask.grid must be 1..26 for the compact codec, got {grid}")
        letters = "abcdefghijklmnopqrstuvwxyz"[:grid]
        fg = [l for i, l in enumerate(labels) if i != background]
        return "\n".join([
            'mask: "none" | row (";" row)*',
            "row: LETTER run+",
            'run: (" " LABEL ":")? " " LETTER LETTER',
            f"LETTER: /[{letters}]/",
            "LABEL: " + " | ".join(_lit(l) for l in fg),
        ])
    if codec == "rle":
        return "\n".join([
            'mask: row ("\\n" row)*',
            'row: run ("| " run)*',
            'run: LABEL " *" COUNT',
            "LABEL: " + " | ".join(_lit(l) for l in labels),
            "COUNT: /[1-9][0-9]{0,2}/",
        ])
    if codec == "coords":
        # 1..grid, longest numbers first so the regex alternation never stops at a prefix
        numbers = "|".join(str(n) for n in range(grid, 0, -1))
        return "\n".join([
            'mask: "None" | item (", " item)*',
            'item: cell ("-" cell)?',
            'cell: "(" NUM "," NUM ")"',
            f"NUM: /({numbers})/",
        ])
    raise GrammarError(f"output.mask.codec {codec!r} has no grammar (known: compact, rle, coords)")


class OutputGrammar:
    """Compiles the manifest's output grammar once; hands out one Constraint per generated sequence."""

    def __init__(self, output_spec: dict, tokenizer, vocab_size: int, eos_ids: Sequence[int]):
        ll = _llguidance()
        self.spec = output_spec
        self.vocab_size = int(vocab_size)
        try:
            self.lltok = ll.LLTokenizer(tokenizer.backend.to_str(), n_vocab=self.vocab_size,
                                        eos_token=[int(e) for e in eos_ids])
        except Exception as exc:  # llguidance raises plain exceptions
            raise GrammarError(f"llguidance cannot use this tokenizer: {exc}") from None
        self._tokenizer = tokenizer
        self._grammars: dict = {}

    def _tag(self, text: str) -> str:
        ids = self._tokenizer.encode(text)
        if len(ids) == 1 and self.lltok.is_special_token(ids[0]):
            return f"<[{ids[0]}]>"
        return _lit(text)

    def lark(self, answers: Sequence[str] | None = None) -> str:
        out = self.spec
        tags = out["tags"]
        if answers is None:
            answers = list(out.get("answers", {}).values()) or None
        rules = {
            # think + answer models have no mask section at all
            "mask": mask_rules(out["mask"]) if "mask" in out["order"] else "",
            "explanation": "explanation: TEXT\nTEXT: /[^<]*/",
            "answer": ("answer: " + " | ".join(_lit(a) for a in answers)) if answers else
                      "answer: ANSWER\nANSWER: /[^<]*/",
        }
        blocks, bodies = [], []
        for name in out["order"]:
            if name not in rules or name not in tags:
                raise GrammarError(f"output.order names {name!r}, which has no tags or grammar")
            open_tag, close_tag = tags[name]
            blocks.append(f"{name}_block")
            bodies.append(f"{name}_block: {self._tag(open_tag)} {name} {self._tag(close_tag)}")
            bodies.append(rules[name])
        return "start: " + " ".join(blocks) + "\n" + "\n".join(bodies) + "\n"

    def constraint(self, answers: Sequence[str] | None = None) -> "Constraint":
        ll = _llguidance()
        key = tuple(answers) if answers else None
        grammar = self._grammars.get(key)
        if grammar is None:
            grammar = self._grammars[key] = ll.LLMatcher.grammar_from_lark(self.lark(answers))
        matcher = ll.LLMatcher(self.lltok, grammar, log_level=0)
        if matcher.is_error():
            raise GrammarError(f"output grammar rejected by llguidance: {matcher.get_error()}")
        return Constraint(matcher, self.vocab_size)


class Constraint:
    """One sequence's grammar state: allowed-token words, token acceptance, forced continuations."""

    def __init__(self, matcher, vocab_size: int):
        self.matcher = matcher
        self.words = (vocab_size + 31) // 32
        self._mask = np.full(self.words, 0xFFFFFFFF, np.uint32)
        self.error = ""

    def allowed_words(self, words: int | None = None) -> np.ndarray:
        """Packed allowed-token bitmask (uint32 words; bit t%32 of word t//32), valid until the next call."""
        if self.error:
            self._mask[:] = 0xFFFFFFFF  # the grammar broke: stop constraining rather than block everything
        else:
            self.matcher.unsafe_compute_mask_ptr(self._mask.ctypes.data, self._mask.nbytes)
        if words is not None and words != self.words:
            out = np.zeros(words, np.uint32)
            out[:min(words, self.words)] = self._mask[:words]
            return out
        return self._mask

    def accept(self, token: int) -> None:
        if not self.error and not self.matcher.consume_token(int(token)):
            self.error = self.matcher.get_error() or f"token {token} rejected"

    def forced(self, limit: int) -> list[int]:
        """Tokens the grammar forces next (not yet accepted), at most `limit`."""
        if self.error or limit <= 0:
            return []
        return list(self.matcher.compute_ff_tokens())[:limit]

    @property
    def done(self) -> bool:
        return not self.error and self.matcher.is_stopped()
