"""Output presets: the prompt and output grammar of the public industrial VLMs, by name (`--preset`).

A preset is an output spec ({"name", "prompt", "output"}) merged over the defaults in manifest.py; a user's
`--output-spec` file is merged over the preset. The prompts of the public models are only partly published: where a
model card or paper does not give the exact wording, the text below follows the published template as closely as
it is known, and the user should put their fine-tuning prompt in `--output-spec` (what matters to the runtime is
the output grammar: the order, tags, mask codec and answers).

| preset     | models                                   | output                                         |
| ---------- | ---------------------------------------- | ---------------------------------------------- |
| omniad     | OmniAD-style (the embedded default)      | <seg> compact mask </seg><think>..<answer>yes/no |
| judo       | JUDO (Qwen2.5-VL-7B)                      | <seg> coords mask </seg><think>..<answer>yes/no  |
| iad-r1     | IAD-R1 (Qwen2-VL-2B, Qwen2.5-VL-3B/7B)     | <think>..</think><answer>yes/no</answer>        |
| anomaly-r1 | AnomalyR1 (Qwen2.5-VL-3B, VLM-R1 template) | <think>..</think><answer>yes/no</answer>        |
"""
from __future__ import annotations

from omniad_edge.errors import ExportError

__all__ = ["PRESETS", "preset_spec", "check_spec_tokens"]

_TAGS = {"mask": ["<seg>", "</seg>"], "explanation": ["<think>", "</think>"], "answer": ["<answer>", "</answer>"]}
_QWEN_SYSTEM = "You are a helpful assistant."
_TEMPLATE_INTRO = ("Following is {n} image of normal sample, which can be used as a template to compare the image "
                   "being queried.")

PRESETS: dict[str, dict] = {
    "omniad": {"prompt": {}, "output": {}},  # the defaults of manifest.py
    "judo": {
        "prompt": {
            "detect": "Is there any anomaly in the query image? First write the anomalous patches as (row,col) "
                      "coordinates on a 16x16 grid in <seg> </seg> tags (None if there is no anomaly), then your "
                      "reasoning in <think> </think> tags, then the answer yes or no in <answer> </answer> tags.",
        },
        "output": {
            "order": ["mask", "explanation", "answer"],
            "tags": _TAGS,
            # JUDO: a cell counts when >= 2% of it is anomalous; masks are binary
            "mask": {"codec": "coords", "grid": 16, "labels": ["others", "anomaly"], "background": 0,
                     "coverage": 0.02},
            "answers": {"anomalous": "yes", "normal": "no"},
        },
    },
    "iad-r1": {
        "prompt": {
            "system": _QWEN_SYSTEM,
            "reference_intro": _TEMPLATE_INTRO,
            "query_intro": "Following is image of test sample:",
            "detect": "Are there any defects in the test image?",
        },
        "output": {"order": ["explanation", "answer"], "tags": _TAGS,
                   "answers": {"anomalous": "yes", "normal": "no"}},
    },
    "anomaly-r1": {
        "prompt": {
            "system": _QWEN_SYSTEM,
            "detect": "Is there any anomaly in the image? Answer yes or no. First output the thinking process in "
                      "<think> </think> tags and then output the final answer in <answer> </answer> tags.",
        },
        "output": {"order": ["explanation", "answer"], "tags": _TAGS,
                   "answers": {"anomalous": "yes", "normal": "no"}},
    },
}


def preset_spec(name: str | None) -> dict:
    """The preset's {"prompt", "output"} overrides ({} for None); ExportError naming the choices otherwise."""
    if name is None:
        return {}
    if name not in PRESETS:
        raise ExportError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return {"prompt": dict(PRESETS[name]["prompt"]), "output": dict(PRESETS[name]["output"])}


def check_spec_tokens(output: dict, tokenizer_json) -> None:
    """Every tag and answer must be text the checkpoint's tokenizer can write: encoding then decoding it gives it
    back (a tokenizer with no byte fallback, or one that normalises, may not)."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_json))
    except Exception as exc:  # tokenizers raises its own exception type
        raise ExportError(f"tokenizer: cannot read {tokenizer_json}: {exc}") from None
    texts = [(f"output.tags.{section}", tag) for section in output["order"] for tag in output["tags"][section]]
    texts += [(f"output.answers.{key}", text) for key, text in output.get("answers", {}).items()]
    for where, text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        back = tokenizer.decode(ids, skip_special_tokens=False)
        if not ids or back != text:
            raise ExportError(f"{where} = {text!r} cannot be written by this checkpoint's tokenizer "
                              f"(it encodes to {ids[:8]} which decodes to {back!r}); choose another preset or "
                              f"override the tags in --output-spec")
