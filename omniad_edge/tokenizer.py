"""tokenizers.Tokenizer wrapper (the bundle's tokenizer.json) and an incremental detokenizer for streaming."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .errors import BundleError


class Detokenizer:
    """Turns token ids into text chunks as they arrive.

    Byte-level BPE pieces may end inside a UTF-8 character; such pieces yield "" until the character completes, so
    the concatenation of all chunks equals `Tokenizer.decode(all ids)` and no chunk holds a replacement character
    that the full decode would not.
    """

    def __init__(self, tokenizer: "Tokenizer", skip_special_tokens: bool = False):
        from tokenizers.decoders import DecodeStream

        self._tok = tokenizer._tok
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._chunks: list[str] = []
        self.holding = False  # the last token gave no text: it may have started a character the stream holds back

    def feed(self, token_id: int) -> str:
        """Add one token id; return the new text it completes ("" when it only starts a character)."""
        self._ids.append(int(token_id))
        chunk = self._stream.step(self._tok, int(token_id)) or ""
        if chunk:
            self._chunks.append(chunk)
        self.holding = not chunk
        return chunk

    def flush(self) -> str:
        """End of generation: return the text still held back (bytes of an unfinished character decode to U+FFFD,
        exactly as a full decode writes them), so the chunks then add up to `Tokenizer.decode(ids)`."""
        emitted = self.text
        full = self._tok.decode(self._ids, skip_special_tokens=self._skip)
        rest = full[len(emitted):] if full.startswith(emitted) else ""
        if rest:
            self._chunks.append(rest)
        return rest

    def feed_many(self, token_ids: Iterable[int]) -> str:
        return "".join(self.feed(t) for t in token_ids)

    @property
    def ids(self) -> list[int]:
        return list(self._ids)

    @property
    def text(self) -> str:
        return "".join(self._chunks)


class Tokenizer:
    """The bundle's tokenizer: encode text without adding special tokens (the prompt template writes them)."""

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer as _HFTokenizer

        try:
            self._tok = _HFTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            raise BundleError(f"tokenizer {path}: cannot load: {exc}") from None
        self.path = Path(path)

    @classmethod
    def from_bundle(cls, bundle) -> "Tokenizer":
        return cls(bundle.tokenizer_path)

    @property
    def backend(self):
        """The underlying tokenizers.Tokenizer (for llguidance and other tools)."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(int(token_id))

    def detokenizer(self, skip_special_tokens: bool = False) -> Detokenizer:
        return Detokenizer(self, skip_special_tokens=skip_special_tokens)

    def token_text(self, vocab_size: int):
        """Each token id's text as UTF-8 bytes, for a decode loop that follows the text without a Detokenizer:
        (bytes uint8, offsets int64 of vocab_size + 1, clean uint8 of vocab_size), or None when the decoder is not
        byte-level. Clean: the token decodes alone to whole UTF-8 without U+FFFD, so a Detokenizer (special tokens
        kept) that holds nothing back emits exactly these bytes for it, and holds nothing back after it (byte-level
        text is the concatenation of the tokens' bytes). Ids the tokenizer lacks are not clean."""
        import json

        import numpy as np

        decoder = json.loads(self._tok.to_str()).get("decoder") or {}
        if decoder.get("type") != "ByteLevel":
            return None
        known = min(int(vocab_size), self.vocab_size)
        texts = [t.encode("utf-8") for t in self._tok.decode_batch([[i] for i in range(known)],
                                                                   skip_special_tokens=False)]
        clean = np.zeros(int(vocab_size), np.uint8)
        clean[:known] = [b"\xef\xbf\xbd" not in t for t in texts]  # U+FFFD: a lone piece of a character
        lengths = np.zeros(int(vocab_size) + 1, np.int64)
        lengths[1:known + 1] = [len(t) for t in texts]
        return np.frombuffer(b"".join(texts), np.uint8).copy(), np.cumsum(lengths), clean
