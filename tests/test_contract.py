"""omniad_edge.contract: the graph I/O names, manifest keys and output blocks shared by export, runtime, training."""
from __future__ import annotations

import pytest

from omniad_edge import contract

TAGS = {"mask": ("<seg>", "</seg>"), "explanation": ("<think>", "</think>"), "answer": ("<answer>", "</answer>")}


def test_output_blocks_of_a_complete_output():
    text = "<seg>j fg</seg><think>Scratch at the top.</think><answer>yes</answer>"
    assert contract.output_blocks(text, TAGS) == {"mask": "j fg", "explanation": "Scratch at the top.",
                                                  "answer": "yes"}


@pytest.mark.parametrize("text, expected", [
    ("<seg>none</seg><think>No def", {"mask": "none", "explanation": "No def"}),  # stopped inside a block
    ("no tags at all", {}),
    ("x<seg></seg>", {"mask": ""}),
    ("<seg>a</seg><seg>b</seg>", {"mask": "a"}),  # the first block counts
    ("</seg>a<seg>b", {"mask": "b"}),  # a stray closing tag before the opening one is text
])
def test_output_blocks_of_partial_or_odd_output(text, expected):
    assert contract.output_blocks(text, TAGS) == expected


def test_decoder_names_in_graph_order():
    assert contract.decoder_input_names(2) == ["inputs_embeds", "position_ids", "attention_mask", "past_key.0",
                                               "past_value.0", "past_key.1", "past_value.1"]
    assert contract.decoder_output_names(1) == ["logits", "new_key.0", "new_value.0"]
    assert contract.decoder_output_names(1, "BNSH", draft=True) == ["logits", "present_key.0", "present_value.0",
                                                                    "draft_logits"]
    assert contract.decoder_input_names(0) == list(contract.DECODER_INPUTS)


def test_exporter_and_loader_share_the_format():
    from export import manifest
    from omniad_edge import bundle

    assert manifest.FORMAT == bundle.FORMAT == contract.BUNDLE_FORMAT
    assert manifest.FORMAT_VERSION in bundle.FORMAT_VERSIONS


def test_the_embedded_bundle_follows_the_contract():
    import onnxruntime as ort

    from omniad_edge.bundle import load_bundle

    b = load_bundle(None)
    for key, subkeys in contract.MANIFEST_KEYS.items():
        assert key in b.manifest and all(k in b.manifest[key] for k in subkeys or ())
    vision = ort.InferenceSession(str(b.vision_path), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(b.decoder_path), providers=["CPUExecutionProvider"])
    layers = int(b.model["num_layers"])
    assert [i.name for i in vision.get_inputs()] == list(contract.vision_input_names(b.manifest))
    assert [o.name for o in vision.get_outputs()] == [contract.VISION_OUTPUT]
    assert [i.name for i in decoder.get_inputs()] == contract.decoder_input_names(layers)
    # the shipped bundle is a --target ort one: the fused decoder's BNSH buffers come back as present_*
    assert contract.decoder_kv_layout(b.manifest) == "BNSH"
    assert [o.name for o in decoder.get_outputs()] == contract.decoder_output_names(layers, "BNSH", draft=True)
    assert b.graphs["decoder"]["draft_logits"] == 15
    assert set(b.output["order"]) <= set(contract.OUTPUT_SECTIONS) and set(b.output["tags"]) == set(b.output["order"])
