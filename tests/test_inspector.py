"""Inspector: modes, result schema, bad frames, malformed model output, options, default bundle."""
import numpy as np
import pytest

from helpers.frames import make_frame
from omniad_edge.errors import BundleError, FrameError
from omniad_edge.generate import Generation
from omniad_edge.inspection import NORMAL_SCORE_MAX

pytest.importorskip("omniad_edge._native", reason="the native sampler/codec module is not built "
                    "(python setup.py build_ext --inplace)")


@pytest.fixture(scope="module")
def detect(tiny_bundle):
    from omniad_edge import Inspector

    return Inspector(tiny_bundle, mode="detect", threads=1, max_new_tokens=10)


@pytest.mark.parametrize("mode", ["detect", "explain"])
def test_every_mode_returns_a_full_inspection(tiny_bundle, mode):
    from omniad_edge import Inspector

    ins = Inspector(tiny_bundle, mode=mode, threads=1, max_new_tokens=10)
    frame = make_frame(90, 120, seed=5)
    result = ins.run(frame)
    assert result.mask.shape == (90, 120) and result.mask.dtype == bool
    assert 0.0 <= result.score <= 1.0
    assert result.provider == "CPUExecutionProvider"
    assert result.options["mode"] == mode and result.options["max_new_tokens"] == 10
    assert result.prompt_tokens > 0 and result.generated_tokens <= 10
    assert result.to_dict()["finish_reason"] == result.finish_reason


def test_bad_frames_raise_and_the_inspector_keeps_working(detect):
    good = make_frame(64, 64, seed=1)
    first = detect.run(good)
    for bad in (None, np.zeros((1, 1, 3), np.uint8), np.full((32, 32, 3), np.nan, np.float32), "missing.png",
                np.zeros((32, 32, 5), np.uint8)):
        with pytest.raises(FrameError):
            detect.run(bad)
    with pytest.raises(FrameError):
        detect.run_batch([good, None])
    again = detect.run(good)
    assert again.text == first.text and again.score == pytest.approx(first.score, abs=1e-6)


@pytest.mark.parametrize("text, repaired", [
    ("<seg>zz ??? garbage", True),  # malformed and unterminated
    ("no tags at all", True),
    ("<seg>none</seg><think>fine</think><answer>no</answer>", False),
    ("<seg>b cd</seg><think>A spot.</think><answer>yes</answer>", False),
    ("<seg>b cd;b cd;" + "x" * 5000, True),
    ("", True),
])
def test_malformed_model_output_never_crashes(tiny_bundle, monkeypatch, text, repaired):
    from omniad_edge import Inspector

    ins = Inspector(tiny_bundle, mode="explain", threads=1, max_new_tokens=4)

    def fake_generate(requests, **_):
        return [Generation(ids=[], text=text, finish_reason="eos", score=0.5, prompt_tokens=len(r.prompt),
                           timings={"prefill": 0.0, "decode": 0.0}) for r in requests]

    monkeypatch.setattr(ins.generator, "generate", fake_generate)
    result = ins.run(make_frame(64, 80, seed=2))
    assert result.mask_repaired is repaired
    assert result.mask.shape == (64, 80)
    if "b cd</seg>" in text:
        assert result.is_anomalous and result.answer == "yes" and result.explanation == "A spot."
        assert result.mask[64 // 16: 2 * 64 // 16, 2 * 80 // 16].all() and len(result.boxes) == 1
        assert result.defect_type == "anomaly"
    if "none" in text:
        assert not result.is_anomalous and not result.mask.any() and result.boxes == []


@pytest.mark.parametrize("text, anomalous, defect_type", [
    ("<seg>b cd</seg><think>A spot.</think><answer>yes</answer>", True, "anomaly"),  # the mask's label
    ("<seg>none</seg><think>A spot.</think><answer>yes</answer>", True, "unknown"),  # anomalous, mask names nothing
    ("<seg>none</seg><think>Clean.</think><answer>no</answer>", False, None),
    ("<seg>b cd</seg><think>Clean.</think><answer>no</answer>", False, "anomaly"),  # the answer overrules the mask
    ("<seg>none</seg><think>A sp", False, None),  # no answer: the empty mask decides
])
def test_defect_type_is_never_none_for_an_anomalous_verdict(tiny_bundle, monkeypatch, text, anomalous, defect_type):
    from omniad_edge import Inspector

    ins = Inspector(tiny_bundle, mode="explain", threads=1, max_new_tokens=4)
    monkeypatch.setattr(ins.generator, "generate", lambda requests, **_: [
        Generation(ids=[], text=text, finish_reason="eos", score=0.5, prompt_tokens=1,
                   timings={"prefill": 0.0, "decode": 0.0}) for _ in requests])
    result = ins.run(make_frame(64, 80, seed=2))
    assert (result.is_anomalous, result.defect_type) == (anomalous, defect_type)


def test_detect_mode_stops_when_the_mask_closes(tiny_bundle):
    pytest.importorskip("llguidance", reason="constrained output needs llguidance (extra `grammar`)")
    from omniad_edge import Inspector

    ins = Inspector(tiny_bundle, mode="detect", constrain=True, threads=1, max_new_tokens=120)
    result = ins.run(make_frame(64, 64, seed=1))
    assert result.finish_reason == "mask_closed"
    assert result.text.startswith("<seg>") and (result.text.endswith("</seg>") or result.text.endswith("none"))
    assert not result.mask_repaired


def test_ask_returns_a_letter_or_none(detect, monkeypatch):
    def fake_generate(requests, **_):
        return [Generation(ids=[], text="<seg>none</seg><answer>B</answer>", finish_reason="eos", score=0.1,
                           prompt_tokens=1)]

    monkeypatch.setattr(detect.generator, "generate", fake_generate)
    assert detect.ask(make_frame(64, 64), "Is there any defect?", ["Yes.", "No."]) == "B"


def test_bad_options_are_typed(tiny_bundle):
    from omniad_edge import Inspector
    from omniad_edge.inspector import InspectorError

    with pytest.raises(InspectorError, match="mode"):
        Inspector(tiny_bundle, mode="segment")
    with pytest.raises(InspectorError, match="max_new_tokens"):
        Inspector(tiny_bundle, max_new_tokens=0)
    with pytest.raises(InspectorError, match="sampler"):
        Inspector(tiny_bundle, temperature=-1.0)
    with pytest.raises(InspectorError, match="speculative must be True or False"):
        Inspector(tiny_bundle, speculative="yes")
    with pytest.raises(FrameError):
        Inspector(tiny_bundle, reference=[None])


def test_missing_default_bundle_is_a_clear_error(monkeypatch, tmp_path):
    import omniad_edge.bundle as bundle_module
    from omniad_edge import Inspector

    monkeypatch.setattr(bundle_module, "DEFAULT_BUNDLE_DIR", tmp_path / "default")
    with pytest.raises(BundleError, match="no default bundle"):
        Inspector()


def test_sampling_is_seeded(tiny_bundle):
    from omniad_edge import Inspector

    frame = make_frame(64, 64, seed=9)
    a = Inspector(tiny_bundle, mode="explain", threads=1, temperature=1.0, seed=7, max_new_tokens=8).run(frame)
    b = Inspector(tiny_bundle, mode="explain", threads=1, temperature=1.0, seed=7, max_new_tokens=8).run(frame)
    assert a.text == b.text


def test_close_and_context_manager_refuse_later_calls(tiny_bundle):
    from omniad_edge import Inspector, InspectorClosedError

    frame = make_frame(64, 64, seed=2)
    with Inspector(tiny_bundle, mode="detect", threads=1, max_new_tokens=8) as ins:
        closed_backend = []
        inner = ins.backend.close
        ins.backend.close = lambda: (closed_backend.append(True), inner())
        ins.run(frame)
    assert ins.closed and closed_backend == [True]
    for call in (lambda: ins.run(frame), lambda: ins.run_batch([frame]), lambda: ins.generate(frame, "x"),
                 lambda: ins.ask(frame, "q?", ["a", "b"]), lambda: ins.set_reference([frame]), ins.warmup):
        with pytest.raises(InspectorClosedError, match="closed"):
            call()
    ins.close()  # idempotent
    assert closed_backend == [True] and "closed" in repr(ins)


def test_close_waits_for_calls_in_flight(tiny_bundle):
    import threading

    from omniad_edge import Inspector

    ins = Inspector(tiny_bundle, mode="explain", threads=1, max_new_tokens=16)
    frame = make_frame(64, 64, seed=4)
    want = ins.run(frame).text
    started, release = threading.Event(), threading.Event()

    def slow_chunk(chunk):
        started.set()
        release.wait(10)

    got = []
    worker = threading.Thread(target=lambda: got.append(ins.run(frame, stream=slow_chunk).text))
    worker.start()
    assert started.wait(10)
    closer = threading.Thread(target=ins.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # still waiting for the run in flight
    release.set()
    worker.join(10)
    closer.join(10)
    assert got == [want] and ins.closed


def test_warmup_at_construction_and_on_demand(tiny_bundle, caplog):
    import logging

    from omniad_edge import Inspector

    frame = make_frame(64, 64, seed=6)
    cold = Inspector(tiny_bundle, mode="detect", threads=1, max_new_tokens=12)
    with caplog.at_level(logging.INFO, logger="omniad_edge"):
        warm = Inspector(tiny_bundle, mode="detect", threads=1, max_new_tokens=12, warmup=True)
    assert any("warm-up" in r.message for r in caplog.records)
    assert warm.warmup() > 0
    assert warm.run(frame).text == cold.run(frame).text  # warming up leaves no trace in the results


# -- answer-only models (think + answer, no mask: the iad-r1 preset) -----------------------------------------------
@pytest.fixture(scope="module")
def answer_only_bundle(tiny_bundle, tmp_path_factory):
    import json
    import shutil

    from export.manifest import load_output_spec

    out = tmp_path_factory.mktemp("answer-only") / "bundle"
    shutil.copytree(tiny_bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    spec = load_output_spec(preset="iad-r1")
    spec["prompt"]["query_intro"] = ""  # no references here: keeps the prompt the reference runner renders
    manifest["prompt"], manifest["output"] = spec["prompt"], spec["output"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_answer_only_detect_scores_the_answer_tokens_in_one_step(answer_only_bundle):
    """Detect skips the reasoning: the prompt ends with the answer's open tag, and score is the model's
    P(yes-spellings) / P(yes- or no-spellings) at the next token, checked against a plain onnxruntime loop."""
    from helpers.reference import BundleRunner
    from omniad_edge import Inspector

    ins = Inspector(answer_only_bundle, mode="detect", threads=1)
    probe = ins.answer_probe
    assert ins.tokenizer.decode(list(probe.lead)) == "<answer>" and ins.max_new_tokens == 16
    assert {ins.tokenizer.decode([t]) for t in probe.anomalous} == {"y", "Y"}
    assert {ins.tokenizer.decode([t]) for t in probe.normal} == {"n", "N"}
    frame = make_frame(64, 96, seed=7)
    result = ins.run(frame)
    runner = BundleRunner(answer_only_bundle)
    prompt = runner.prompt([frame])
    prompt.input_ids = np.concatenate([prompt.input_ids, np.asarray(probe.lead, np.int64)])
    logits = runner.generate([prompt], 1).logits[0][0].astype(np.float64)
    p = np.exp(logits - logits.max())
    expected = p[list(probe.anomalous)].sum() / (p[list(probe.anomalous)].sum() + p[list(probe.normal)].sum())
    assert result.anomaly_probability == pytest.approx(expected, abs=1e-5)
    assert (result.score >= 0.5) is result.is_anomalous
    assert result.text.startswith("<answer>") and result.mask is None and result.grid is None
    assert result.boxes == [] and not result.mask_repaired and result.generated_tokens <= 16


@pytest.mark.parametrize("text, anomalous, score", [
    ("yes</answer>", True, 0.8),
    ("No.</answer>", False, 0.3),
    ("maybe</answer>", True, 0.8),  # unreadable answer: the model's own probability decides
    ("maybe</answer>", False, 0.4),
])
def test_answer_only_verdict_comes_from_the_answer(answer_only_bundle, monkeypatch, text, anomalous, score):
    from omniad_edge import Inspector

    ins = Inspector(answer_only_bundle, mode="detect", threads=1)

    def fake_generate(requests, **_):
        return [Generation(ids=[], text=text, finish_reason="eos", score=None, prompt_tokens=len(r.prompt),
                           timings={"prefill": 0.0, "decode": 0.0}, answer_score=score) for r in requests]

    monkeypatch.setattr(ins.generator, "generate", fake_generate)
    result = ins.run(make_frame(64, 96, seed=2))
    assert result.is_anomalous is anomalous and result.score == score and result.mask is None


def test_answer_only_bundles_refuse_tiling(answer_only_bundle):
    from omniad_edge import Inspector
    from omniad_edge.inspector import InspectorError

    with pytest.raises(InspectorError, match="writes no mask"):
        Inspector(answer_only_bundle, tiles=(2, 2))


# -- one meaning for score and verdict ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode, text, probability, anomalous, score", [
    ("detect", "<seg>none</seg>", 0.8, False, NORMAL_SCORE_MAX),  # empty mask written, defect masks weigh more
    ("detect", "<seg>b cd</seg>", 0.9, True, 0.9),
    ("explain", "<seg>b cd</seg><think>Clean.</think><answer>no</answer>", 0.9, False, NORMAL_SCORE_MAX),
    ("explain", "<seg>none</seg><think>A spot.</think><answer>yes</answer>", 0.1, True, 0.5),
    ("explain", "<seg>none</seg><think>Clean.</think><answer>no</answer>", 0.1, False, 0.1),
])
def test_score_follows_the_verdict_and_the_probability_is_kept(tiny_bundle, monkeypatch, mode, text, probability,
                                                              anomalous, score):
    from omniad_edge import Inspector

    ins = Inspector(tiny_bundle, mode=mode, threads=1, max_new_tokens=4)
    monkeypatch.setattr(ins.generator, "generate", lambda requests, **_: [
        Generation(ids=[], text=text, finish_reason="eos", score=probability, prompt_tokens=1,
                   timings={"prefill": 0.0, "decode": 0.0}) for _ in requests])
    result = ins.run(make_frame(64, 80, seed=2))
    assert result.is_anomalous is anomalous and result.score == score
    assert result.anomaly_probability == probability
    assert result.to_dict(mask="none")["anomaly_probability"] == probability


def test_no_frame_has_a_score_on_the_other_side_of_its_verdict():
    """Property over many frames of the embedded model: synthetic parts with and without defects, noise and flat
    frames, greedy and sampled, both modes. `score >= 0.5` is the verdict on every one; the probability may
    disagree (sampling makes it happen here), and where it agrees it is the score."""
    from omniad_edge import Inspector
    from omniad_edge.synth import make_sample

    rng = np.random.default_rng(0)
    frames = [make_sample(3_000_000 + i).image for i in range(12)]
    frames += [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(3)]
    frames += [np.full((160, 200, 3), v, np.uint8) for v in (0, 128, 255)]
    disagreements = checked = 0
    for options in ({"mode": "detect"}, {"mode": "detect", "temperature": 1.5, "seed": 1},
                    {"mode": "explain", "temperature": 1.5, "seed": 2}):
        with Inspector(threads=1, refine=False, max_new_tokens=48, **options) as ins:
            for frame in frames:
                r = ins.run(frame)
                checked += 1
                assert (r.score >= 0.5) is r.is_anomalous and 0.0 <= r.score <= 1.0
                p = r.anomaly_probability
                if p is None or (p >= 0.5) is not r.is_anomalous:
                    disagreements += 1
                else:
                    assert r.score == p
    assert checked == 54 and disagreements > 0
