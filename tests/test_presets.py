"""Output presets of the public industrial VLMs (export/presets.py): specs, tokenizer fit, and bundles that run."""
import json
import shutil

import numpy as np
import pytest

from export.manifest import load_output_spec
from export.presets import PRESETS, check_spec_tokens
from helpers.frames import make_frame
from omniad_edge.errors import ExportError


@pytest.mark.parametrize("name, order, codec", [
    ("omniad", ["mask", "explanation", "answer"], "compact"),
    ("judo", ["mask", "explanation", "answer"], "coords"),
    ("iad-r1", ["explanation", "answer"], None),
    ("anomaly-r1", ["explanation", "answer"], None),
])
def test_presets_set_the_output_grammar(name, order, codec):
    spec = load_output_spec(preset=name)
    out = spec["output"]
    assert out["order"] == order
    assert out["tags"]["answer"] == ["<answer>", "</answer>"] and out["answers"]["anomalous"] == "yes"
    if codec:
        assert out["mask"]["codec"] == codec and out["tags"]["mask"] == ["<seg>", "</seg>"]
    assert set(PRESETS) == {"omniad", "judo", "iad-r1", "anomaly-r1"}


def test_iad_r1_prompt_follows_its_few_shot_template():
    prompt = load_output_spec(preset="iad-r1")["prompt"]
    assert prompt["query_intro"] == "Following is image of test sample:"
    assert prompt["detect"] == "Are there any defects in the test image?"
    assert prompt["reference_intro"].startswith("Following is {n} image of normal sample")


def test_output_spec_file_overrides_the_preset(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"prompt": {"detect": "Mine."}, "output": {"answers": {"anomalous": "Yes",
                                                                                      "normal": "No"}}}))
    spec = load_output_spec(path, preset="judo")
    assert spec["prompt"]["detect"] == "Mine." and spec["output"]["answers"] == {"anomalous": "Yes", "normal": "No"}
    assert spec["output"]["mask"]["codec"] == "coords"  # what the file does not name comes from the preset


def test_unknown_preset_names_the_choices():
    with pytest.raises(ExportError, match="anomaly-r1.*iad-r1.*judo.*omniad"):
        load_output_spec(preset="llava")


def test_codec_errors_surface_at_export_time(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"output": {"mask": {"labels": ["others", "scratch", "crack"]}}}))
    with pytest.raises(ExportError, match="exactly 2"):  # coords masks are binary
        load_output_spec(path, preset="judo")


def _word_tokenizer(path, words):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", *words])}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path))
    return path


def test_tags_the_tokenizer_cannot_write_are_refused(tmp_path):
    words = ["<think>", "</think>", "<answer>", "</answer>", "yes", "no"]
    ok = _word_tokenizer(tmp_path / "ok.json", words)
    check_spec_tokens(load_output_spec(preset="iad-r1")["output"], ok)  # every tag is a word it knows
    with pytest.raises(ExportError, match=r"output\.tags\.mask = '<seg>'"):
        check_spec_tokens(load_output_spec(preset="judo")["output"], ok)


def test_the_byte_level_test_tokenizer_writes_every_preset(tiny_checkpoint):
    for name in PRESETS:
        check_spec_tokens(load_output_spec(preset=name)["output"], tiny_checkpoint / "tokenizer.json")


def _preset_bundle(tiny_bundle, tmp_path, name):
    out = tmp_path / name
    shutil.copytree(tiny_bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    spec = load_output_spec(preset=name)
    manifest["prompt"], manifest["output"] = spec["prompt"], spec["output"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_a_judo_bundle_writes_and_reads_coordinate_masks(tiny_bundle, tmp_path):
    """A live constrained run: the grammar keeps the random model's text in the coords syntax, and the runtime's
    grid is that text decoded (finished or cut by the token limit, then flagged)."""
    pytest.importorskip("llguidance", reason="constrained output needs llguidance (extra `grammar`)")
    from omniad_edge import Inspector, tam

    ins = Inspector(_preset_bundle(tiny_bundle, tmp_path, "judo"), mode="detect", constrain=True, threads=1,
                    max_new_tokens=24)
    result = ins.run(make_frame(64, 96, seed=3))
    assert result.text.startswith("<seg>(") or result.text.startswith("<seg>None")
    decoded = tam.Codec("coords").decode(result.text[len("<seg>"):].removesuffix("</seg>"))
    assert np.array_equal(result.grid, decoded.grid) and result.grid.any() == result.is_anomalous
    assert result.mask_repaired == (decoded.repaired or not decoded.complete or result.finish_reason == "length")


def _fake_text(ins, monkeypatch, text):
    from omniad_edge.generate import Generation

    def fake_generate(requests, **_):
        return [Generation(ids=[], text=text, finish_reason="eos", score=0.5, prompt_tokens=len(r.prompt),
                           timings={"prefill": 0.0, "decode": 0.0}) for r in requests]

    monkeypatch.setattr(ins.generator, "generate", fake_generate)


def test_judo_output_becomes_mask_boxes_and_verdict(tiny_bundle, tmp_path, monkeypatch):
    from omniad_edge import Inspector

    ins = Inspector(_preset_bundle(tiny_bundle, tmp_path, "judo"), mode="explain", threads=1, max_new_tokens=4)
    _fake_text(ins, monkeypatch, "<seg>(11,12)-(11,14), (12,11)</seg><think>A dent.</think><answer>yes</answer>")
    result = ins.run(make_frame(160, 160, seed=1))
    assert result.is_anomalous and not result.mask_repaired and result.explanation == "A dent."
    expected = np.zeros((16, 16), bool)
    expected[10, 11:14] = expected[11, 10] = True
    assert np.array_equal(result.grid.astype(bool), expected)
    assert result.mask[100:110, 110:140].all() and result.mask.sum() == 4 * 100  # 10x10 px cells
    assert len(result.boxes) == 1  # the two runs touch diagonally: one 8-connected component
    _fake_text(ins, monkeypatch, "<seg>None</seg><think>Clean.</think><answer>no</answer>")
    result = ins.run(make_frame(160, 160, seed=1))
    assert not result.is_anomalous and not result.mask.any() and not result.mask_repaired


@pytest.mark.parametrize("text, anomalous", [
    ("<think>A scratch near the rim.</think><answer>yes</answer>", True),
    ("<think>Clean.</think><answer>No</answer>", False),
])
def test_an_answer_only_bundle_takes_its_verdict_from_the_answer(tiny_bundle, tmp_path, monkeypatch, text,
                                                                   anomalous):
    from omniad_edge import Inspector

    ins = Inspector(_preset_bundle(tiny_bundle, tmp_path, "iad-r1"), mode="explain", threads=1, max_new_tokens=4)
    _fake_text(ins, monkeypatch, text)
    result = ins.run(make_frame(64, 96, seed=4))
    assert result.is_anomalous is anomalous and result.explanation.startswith(("A scratch", "Clean"))
