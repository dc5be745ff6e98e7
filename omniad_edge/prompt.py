"""Prompt rendering from the manifest's templates -> token ids.

The user turn is laid out like Qwen2.5-VL's chat template renders a message list
[reference_intro, reference images..., query_intro, query image, task] (parts back to back, no separators), so a
training pipeline that uses the stock chat template on that list produces the same tokens:

    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n
    [Following is {n} image of normal sample, ...<|vision_start|><|image_pad|>*k<|vision_end|> ...
     Following is the query image:]<|vision_start|><|image_pad|>*k<|vision_end|>{task}<|im_end|>\\n
    <|im_start|>assistant\\n

The bracketed part is present only with reference images (training/spec.py renders the no-reference prompt the
same way).

Image pads are expanded to the number of merged image tokens without tokenizing them: the text between images is
tokenized on its own (image pads, vision_start and vision_end are added tokens, so this equals tokenizing the whole
string). The prefix shared by every frame (system prompt + reference images) is reported as `prefix_len` for the
prefix cache.
"""
from __future__ import annotations

import difflib
import re
import string
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from .errors import OmniADError

LETTERS = "ABCDE"
_SENTINEL = "\x00"
_CHOICE_RE = re.compile(r"\b([A-E])\b")


class PromptError(OmniADError, ValueError):
    """A prompt cannot be built: bad question/options, or text that would inject special tokens."""


@dataclass(frozen=True)
class Prompt:
    ids: np.ndarray                        # (S,) int64
    image_spans: tuple[tuple[int, int], ...]  # (start, n_tokens) per image, references first, query last
    prefix_len: int                        # leading tokens that do not depend on the query frame
    n_reference: int

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def format_options(options: Sequence[str] | Mapping[str, str]) -> list[tuple[str, str]]:
    """Options as [(letter, text)]: a list is lettered A.., a mapping keeps its letters."""
    if isinstance(options, Mapping):
        pairs = [(str(k).strip().upper(), str(v)) for k, v in options.items()]
    elif isinstance(options, (list, tuple)):
        pairs = [(LETTERS[i], str(v)) for i, v in enumerate(options[: len(LETTERS)])]
        if len(options) > len(LETTERS):
            raise PromptError(f"options: at most {len(LETTERS)} options (A-E), got {len(options)}")
    else:
        raise PromptError(f"options must be a list of strings or a mapping letter -> text, got {type(options).__name__}")
    if len(pairs) < 2:
        raise PromptError(f"options: need at least 2 options, got {len(pairs)}")
    letters = [k for k, _ in pairs]
    if any(k not in LETTERS for k in letters) or len(set(letters)) != len(letters):
        raise PromptError(f"options: letters must be distinct among {list(LETTERS)}, got {letters}")
    return pairs


def ask_text(question: str, options: Sequence[str] | Mapping[str, str]) -> str:
    """MMAD-style task text: the question, then one `X. option` line per option."""
    if not isinstance(question, str) or not question.strip():
        raise PromptError("question must be a non-empty string")
    lines = [question.strip()] + [f"{k}. {v}" for k, v in format_options(options)]
    return "\n".join(lines)


def parse_choice(text: str, options: Sequence[str] | Mapping[str, str] | None = None) -> str | None:
    """MMAD's scoring rule: the last standalone letter A-E in `text`; else the option whose text matches best."""
    matches = _CHOICE_RE.findall(text or "")
    if matches:
        return matches[-1]
    if options is None or not text:
        return None
    pairs = format_options(options)
    lowered = text.lower()
    for k, v in pairs:
        if v.strip() and v.strip().lower() in lowered:
            return k
    best = difflib.get_close_matches(lowered.strip(), [v.lower() for _, v in pairs], n=1, cutoff=0.6)
    if best:
        return next(k for k, v in pairs if v.lower() == best[0])
    return None


class PromptBuilder:
    """Renders the manifest's `prompt` templates and tokenizes them."""

    def __init__(self, prompt_spec: Mapping[str, str], tokens: Mapping, tokenizer):
        self.spec = dict(prompt_spec)
        self.tokenizer = tokenizer
        self.image_pad = int(tokens["image_pad"])
        head, sep, tail = self.spec["image"].partition("{image_pads}")
        if not sep:
            raise PromptError("manifest prompt.image must contain '{image_pads}'")
        self._image_head, self._image_tail = head, tail
        fields = {f for _, f, _, _ in string.Formatter().parse(self.spec["template"]) if f}
        if not {"system", "content"} <= fields:
            raise PromptError("manifest prompt.template must contain '{system}' and '{content}'")
        # Texts that would be tokenized as vision tokens: refuse them in user text.
        self._reserved = [t for t in ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>",
                                      "<|im_start|>", "<|im_end|>", head, tail) if t]

    def _check_user_text(self, text: str, what: str) -> None:
        if _SENTINEL in text:
            raise PromptError(f"{what} must not contain NUL characters")
        for token in self._reserved:
            if token in text:
                raise PromptError(f"{what} must not contain the special token text {token!r}")

    def render(self, task: str, image_tokens: Sequence[int], n_reference: int = 0,
               system: str | None = None) -> Prompt:
        """Token ids for one query: `image_tokens` lists the merged-token count of each image, references first."""
        if len(image_tokens) != n_reference + 1:
            raise PromptError(f"image_tokens: expected {n_reference + 1} counts (references + query), got {len(image_tokens)}")
        if any(int(n) <= 0 for n in image_tokens):
            raise PromptError(f"image_tokens: every image needs at least one token, got {list(image_tokens)}")
        self._check_user_text(task, "task text")
        system = self.spec["system"] if system is None else system
        self._check_user_text(system, "system prompt")

        image = _SENTINEL
        prefix_content = query_intro = ""
        if n_reference:
            prefix_content = self.spec["reference_intro"].format(n=n_reference) + image * n_reference
            query_intro = self.spec["query_intro"]
        content = prefix_content + query_intro + image + task
        marker = _SENTINEL + "PREFIX" + _SENTINEL
        full = self.spec["template"].format(system=system, content=marker + content)
        before, after = full.split(marker)
        ids = self._tokenize(before + after, image_tokens)
        prefix_ids = self._tokenize(before + prefix_content, image_tokens[:n_reference])
        common = 0
        for a, b in zip(prefix_ids, ids):
            if a != b:
                break
            common += 1

        spans, pos = [], 0
        arr = np.asarray(ids, dtype=np.int64)
        pad_positions = np.flatnonzero(arr == self.image_pad)
        if pad_positions.size != sum(int(n) for n in image_tokens):
            raise PromptError("rendered prompt holds image-pad tokens outside the image slots (check the templates)")
        for n in image_tokens:
            start = int(pad_positions[pos])
            spans.append((start, int(n)))
            pos += int(n)
        return Prompt(ids=arr, image_spans=tuple(spans), prefix_len=common, n_reference=n_reference)

    def _tokenize(self, rendered: str, image_tokens: Sequence[int]) -> list[int]:
        pieces = rendered.split(_SENTINEL)
        if len(pieces) != len(image_tokens) + 1:
            raise PromptError("manifest prompt templates must not contain NUL characters")
        ids: list[int] = []
        for i, piece in enumerate(pieces):
            text = (self._image_tail if i else "") + piece + (self._image_head if i < len(image_tokens) else "")
            if text:
                ids.extend(self.tokenizer.encode(text))
            if i < len(image_tokens):
                ids.extend([self.image_pad] * int(image_tokens[i]))
        return ids

    def detect(self, image_tokens: Sequence[int], n_reference: int = 0) -> Prompt:
        return self.render(self.spec["detect"], image_tokens, n_reference)

    def ask(self, question: str, options, image_tokens: Sequence[int], n_reference: int = 0) -> Prompt:
        return self.render(ask_text(question, options), image_tokens, n_reference)
