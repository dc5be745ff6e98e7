"""Prompt rendering: template expansion, image-pad runs, prefix length, MMAD ask prompts and choice parsing."""
import numpy as np
import pytest

from omniad_edge.prompt import PromptBuilder, PromptError, ask_text, parse_choice
from omniad_edge.tokenizer import Tokenizer

SPEC = {
    "template": "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{content}<|im_end|>\n"
                "<|im_start|>assistant\n",
    "image": "<|vision_start|>{image_pads}<|vision_end|>",
    "system": "You are an industrial inspector.",
    "detect": "Inspect the part. Write the anomaly mask, then explain, then answer.",
    "reference_intro": "Following is {n} image of normal sample, which can be used as a template to compare the "
                       "image being queried.",
    "query_intro": "Following is the query image:",
}
TOKENS = {"image_pad": 151655, "vision_start": 151652, "vision_end": 151653}


@pytest.fixture(scope="module")
def tok(qwen_tokenizer_path):
    return Tokenizer(qwen_tokenizer_path)


@pytest.fixture(scope="module")
def builder(tok):
    return PromptBuilder(SPEC, TOKENS, tok)


def _whole_string_ids(tok, content_images, text_after):
    """Reference: tokenize the fully expanded string in one go (slow path)."""
    return tok.encode(SPEC["template"].format(system=SPEC["system"], content=content_images + text_after))


def test_detect_prompt_equals_tokenizing_the_expanded_string(tok, builder):
    prompt = builder.detect([12])
    image = "<|vision_start|>" + "<|image_pad|>" * 12 + "<|vision_end|>"
    expected = _whole_string_ids(tok, image, SPEC["detect"])
    assert prompt.ids.tolist() == expected
    assert prompt.ids.dtype == np.int64
    (start, n), = prompt.image_spans
    assert n == 12 and prompt.ids[start - 1] == 151652 and prompt.ids[start + n] == 151653
    assert (prompt.ids[start:start + n] == 151655).all()
    # no references: the prefix is the system turn and the user header
    header = tok.encode(SPEC["template"].split("{content}")[0].format(system=SPEC["system"]))
    assert prompt.prefix_len == len(header) and prompt.ids[:prompt.prefix_len].tolist() == header


def test_references_come_first_and_form_the_prefix(tok, builder):
    prompt = builder.detect([4, 6, 9], n_reference=2)
    ref = lambda n: "<|vision_start|>" + "<|image_pad|>" * n + "<|vision_end|>"  # noqa: E731
    content = SPEC["reference_intro"].format(n=2) + ref(4) + ref(6) + SPEC["query_intro"] + ref(9)
    assert prompt.ids.tolist() == _whole_string_ids(tok, content, SPEC["detect"])
    assert [n for _, n in prompt.image_spans] == [4, 6, 9]
    # the prefix ends right after the last reference image
    second_ref_end = prompt.image_spans[1][0] + 6
    assert prompt.prefix_len == second_ref_end + 1 and prompt.ids[second_ref_end] == 151653
    # the prefix does not depend on the query
    other = builder.detect([4, 6, 20], n_reference=2)
    assert other.ids[:other.prefix_len].tolist() == prompt.ids[:prompt.prefix_len].tolist()


def test_ask_prompt_lists_options_on_their_own_lines(tok, builder):
    text = ask_text("Is there any defect in the object?", ["Yes.", "No."])
    assert text == "Is there any defect in the object?\nA. Yes.\nB. No."
    prompt = builder.ask("Is there any defect in the object?", ["Yes.", "No."], [5])
    assert tok.decode(prompt.ids.tolist()).endswith("<|vision_end|>" + text + "<|im_end|>\n<|im_start|>assistant\n")


def test_options_mapping_and_validation():
    assert ask_text("Q?", {"a": "x", "b": "y"}) == "Q?\nA. x\nB. y"
    with pytest.raises(PromptError, match="at most 5"):
        ask_text("Q?", list("abcdef"))
    with pytest.raises(PromptError, match="at least 2"):
        ask_text("Q?", ["only"])
    with pytest.raises(PromptError, match="distinct"):
        ask_text("Q?", {"A": "x", "F": "y"})
    with pytest.raises(PromptError, match="question"):
        ask_text("  ", ["a", "b"])


@pytest.mark.parametrize("text, letter", [
    ("B", "B"),
    ("The answer is A. Actually, C.", "C"),
    ("<answer>D</answer>", "D"),
    ("I think (E) is right", "E"),
    ("ABCD", None),  # letters inside a word do not count
    ("", None),
])
def test_parse_choice_last_standalone_letter(text, letter):
    assert parse_choice(text) == letter


def test_parse_choice_falls_back_to_option_text():
    assert parse_choice("there is a crack", ["A scratch", "A crack", "Nothing"]) == "B"
    assert parse_choice("nothing", ["scratch", "crack", "Nothing"]) == "C"


def test_user_text_cannot_inject_vision_tokens(builder):
    with pytest.raises(PromptError, match="special token text '<\\|image_pad\\|>'"):
        builder.ask("What is <|image_pad|>?", ["a", "b"], [4])
    with pytest.raises(PromptError, match="NUL"):
        builder.render("a\x00b", [4])


def test_image_count_must_match(builder):
    with pytest.raises(PromptError, match="expected 2 counts"):
        builder.detect([4], n_reference=1)
    with pytest.raises(PromptError, match="at least one token"):
        builder.detect([0])


def test_template_without_image_pads_is_refused(tok):
    with pytest.raises(PromptError, match="image_pads"):
        PromptBuilder(dict(SPEC, image="<|vision_start|><|vision_end|>"), TOKENS, tok)
