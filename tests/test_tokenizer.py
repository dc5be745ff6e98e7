"""Tokenizer wrapper and incremental detokenizer on the real Qwen2 tokenizer."""
import pytest

from omniad_edge.errors import BundleError
from omniad_edge.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok(qwen_tokenizer_path):
    return Tokenizer(qwen_tokenizer_path)


def test_special_tokens_have_qwen_ids(tok):
    assert tok.token_to_id("<|image_pad|>") == 151655
    assert tok.token_to_id("<|vision_start|>") == 151652
    assert tok.encode("<|im_start|>user\n") == [151644, 872, 198]


TEXTS = [
    "<seg>None</seg><think>A scratch on the upper left.</think><answer>yes</answer>",
    "划痕位于左上角 🔩🔧 naïve café — ½",
    "others *16| scratch *3| others *13\n others *16",
    "emoji split across pieces: 👩‍🔬 and \U0001F9EA",
]


@pytest.mark.parametrize("text", TEXTS)
def test_streaming_chunks_concatenate_to_full_decode(tok, text):
    ids = tok.encode(text)
    detok = tok.detokenizer()
    chunks = [detok.feed(i) for i in ids]
    assert "".join(chunks) == tok.decode(ids) == text
    assert detok.text == text and detok.ids == ids
    # no chunk carries a half character
    assert all("\ufffd" not in c for c in chunks)


def _byte_token_ids(tok, text):
    """One byte-level token per UTF-8 byte (GPT-2's printable byte alphabet), forcing a split character."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [tok.token_to_id(table[b]) for b in text.encode("utf-8")]


def test_multibyte_character_waits_for_its_last_piece(tok):
    ids = _byte_token_ids(tok, "🔩")
    assert len(ids) == 4 and None not in ids
    detok = tok.detokenizer()
    assert [detok.feed(i) for i in ids] == ["", "", "", "🔩"]
    assert tok.decode(ids) == "🔩"


def test_skip_special_tokens(tok):
    ids = tok.encode("<|im_start|>hi<|im_end|>")
    assert tok.detokenizer(skip_special_tokens=True).feed_many(ids) == "hi"
    assert tok.detokenizer().feed_many(ids) == "<|im_start|>hi<|im_end|>"


def test_bad_tokenizer_file_is_a_bundle_error(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{}")
    with pytest.raises(BundleError, match="cannot load"):
        Tokenizer(bad)


def test_encode_requires_str(tok):
    with pytest.raises(TypeError, match="text must be str"):
        tok.encode(b"bytes")


def test_flush_releases_an_unfinished_character(tok):
    ids = _byte_token_ids(tok, "🔩")[:2]  # half a character: generation stopped mid-way
    detok = tok.detokenizer()
    assert detok.feed_many(ids) == ""
    rest = detok.flush()
    assert rest == tok.decode(ids) and "\ufffd" in rest
    assert detok.text == tok.decode(ids)


def test_token_text_is_what_the_detokenizer_emits_for_clean_tokens(tok):
    """The native Text-as-Mask stop's table: for every clean token in real text (ASCII, CJK, emoji split across
    byte pieces, special tokens) a Detokenizer holding nothing back emits exactly the table's bytes; pieces of a
    character are not clean, and the Detokenizer holds them back."""
    data, offsets, clean = tok.token_text(tok.vocab_size + 3)
    assert len(offsets) == tok.vocab_size + 4 and len(clean) == tok.vocab_size + 3
    assert not clean[tok.vocab_size:].any()  # ids past the tokenizer's own: never fed natively
    seen_clean = seen_piece = 0
    for text in TEXTS:
        detok = tok.detokenizer()
        for t in tok.encode(text):
            held = detok.holding
            chunk = detok.feed(t)
            if held:
                continue
            if clean[t]:
                seen_clean += 1
                assert chunk.encode("utf-8") == bytes(data[offsets[t]:offsets[t + 1]]), t
                assert not detok.holding or not chunk
            else:
                seen_piece += 1
                assert chunk == "" and detok.holding, t  # a piece of a character: the detokenizer holds it back
    assert seen_clean > 20 and seen_piece > 0


def test_token_text_needs_a_byte_level_decoder(tmp_path, tok):
    import json

    spec = json.loads(tok.backend.to_str())
    spec["decoder"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True}
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec))
    assert Tokenizer(path).token_text(10) is None
