"""Constrained output: the manifest grammar in llguidance, masks, forced-token runs."""
import pytest

pytest.importorskip("llguidance", reason="constrained output needs llguidance (extra `grammar`)")

from omniad_edge.grammar import GrammarError, OutputGrammar, mask_rules  # noqa: E402
from omniad_edge.tokenizer import Tokenizer  # noqa: E402
from helpers.frames import make_frame  # noqa: E402

OUTPUT = {
    "order": ["mask", "explanation", "answer"],
    "tags": {"mask": ["<seg>", "</seg>"], "explanation": ["<think>", "</think>"], "answer": ["<answer>", "</answer>"]},
    "mask": {"codec": "compact", "grid": 16, "labels": ["others", "scratch", "crack"], "background": 0,
             "coverage": 0.02},
    "answers": {"anomalous": "yes", "normal": "no"},
}


@pytest.fixture(scope="module")
def grammar(qwen_tokenizer_path):
    tok = Tokenizer(qwen_tokenizer_path)
    return tok, OutputGrammar(OUTPUT, tok, 151936, [151645, 151643])


def _walk(tok, constraint, text):
    """Feed text's tokens; return the index of the first token the grammar forbids (None if all allowed)."""
    for k, token in enumerate(tok.encode(text)):
        words = constraint.allowed_words()
        if not (int(words[token // 32]) >> (token % 32)) & 1:
            return k
        constraint.accept(token)
    return None


@pytest.mark.parametrize("text", [
    "<seg>none</seg><think>No defect is visible.</think><answer>no</answer>",
    "<seg>b ce;c scratch: df gh;p crack: ap</seg><think>A scratch at the top.</think><answer>yes</answer>",
])
def test_well_formed_outputs_are_accepted_to_the_end(grammar, text):
    tok, g = grammar
    c = g.constraint()
    assert _walk(tok, c, text) is None
    assert c.done and not c.error


@pytest.mark.parametrize("text", [
    "<seg>q ab</seg>",  # row letter beyond the 16-grid
    "<seg>b c</seg>",  # a range needs two letters
    "<seg>b dent: cd</seg>",  # unknown label
    "<seg>none</seg><think>x</think><answer>maybe</answer>",  # not one of the answers
    "Sure! <seg>none</seg>",  # text before the first block
])
def test_malformed_outputs_are_blocked(grammar, text):
    tok, g = grammar
    assert _walk(tok, g.constraint(), text) is not None


def test_tags_are_forced(grammar):
    tok, g = grammar
    c = g.constraint()
    forced = c.forced(10)
    assert forced and tok.decode(forced) in "<seg>"  # llguidance keeps back a token that could still merge
    for token in tok.encode("<seg>none</seg>"):
        c.accept(token)
    assert tok.decode(c.forced(10)) == "<think>"  # a special token in Qwen's vocabulary: one id, by id
    assert "<[151667]>" in g.lark()


def test_answer_choices_for_ask(grammar):
    tok, g = grammar
    c = g.constraint(answers=["A", "B"])
    assert _walk(tok, c, "<seg>none</seg><think>ok</think><answer>B</answer>") is None
    assert _walk(tok, g.constraint(answers=["A", "B"]),
                 "<seg>none</seg><think>ok</think><answer>C</answer>") is not None


@pytest.mark.parametrize("text,ok", [
    ("<seg>None</seg><think>Clean.</think><answer>no</answer>", True),
    ("<seg>(11,12)-(11,14), (12,11)</seg><think>A dent.</think><answer>yes</answer>", True),
    ("<seg>(17,1)</seg>", False),   # beyond the 16-grid
    ("<seg>(0,1)</seg>", False),    # 1-indexed
    ("<seg>(3)</seg>", False),      # a cell needs row and column
])
def test_coords_codec_grammar(qwen_tokenizer_path, text, ok):
    tok = Tokenizer(qwen_tokenizer_path)
    spec = dict(OUTPUT, mask={"codec": "coords", "grid": 16, "labels": ["others", "anomaly"], "background": 0,
                              "coverage": 0.02})
    c = OutputGrammar(spec, tok, 151936, [151645, 151643]).constraint()
    blocked = _walk(tok, c, text)
    assert (blocked is None) is ok


def test_answer_only_grammar(qwen_tokenizer_path):
    """Think + answer models (IAD-R1, AnomalyR1): no mask block at all."""
    tok = Tokenizer(qwen_tokenizer_path)
    spec = {"order": ["explanation", "answer"], "tags": OUTPUT["tags"], "answers": {"anomalous": "yes",
                                                                                     "normal": "no"}}
    g = OutputGrammar(spec, tok, 151936, [151645, 151643])
    c = g.constraint()
    assert _walk(tok, c, "<think>The surface is clean.</think><answer>no</answer>") is None and c.done
    assert _walk(tok, g.constraint(), "<seg>none</seg>") is not None


def test_rle_codec_rules():
    rules = mask_rules({"codec": "rle", "grid": 16, "labels": ["others", "anomaly"]})
    assert 'LABEL: "others" | "anomaly"' in rules
    with pytest.raises(GrammarError, match="no grammar"):
        mask_rules({"codec": "polygon", "grid": 16, "labels": ["others", "a"]})
    with pytest.raises(GrammarError, match="1..26"):
        mask_rules({"codec": "compact", "grid": 40, "labels": ["others", "a"]})


def test_constrained_run_is_well_formed_and_forced_runs_change_nothing(tiny_bundle):
    pytest.importorskip("omniad_edge._native", reason="the native sampler/codec module is not built")
    from omniad_edge import Inspector

    ins = Inspector(tiny_bundle, mode="detect", constrain=True, threads=1, max_new_tokens=120)
    frame = make_frame(64, 64, seed=1)
    fast = ins.run(frame)
    forwards_fast = ins.generator._last_forwards
    ins.generator.forced_runs = False
    slow = ins.run(frame)
    forwards_slow = ins.generator._last_forwards
    assert fast.text == slow.text and not fast.mask_repaired
    assert forwards_fast < forwards_slow  # the forced tags cost no model step each
