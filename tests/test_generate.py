"""Generation on the exported tiny model: token parity with transformers' greedy generate, prefix cache, batch,
stop conditions, streaming, score; and the empty-mask score tracker on hand-made inputs."""
import json
import math

import numpy as np
import pytest

from omniad_edge.generate import EmptyMaskScore
from omniad_edge.inspection import verdict_score
from helpers.drafters import oracle_and_liar, record_generations
from helpers.frames import make_frame

pytest.importorskip("omniad_edge._native", reason="the native sampler/codec module is not built "
                    "(python setup.py build_ext --inplace)")


# -- score tracker on hand-made steps --------------------------------------------------------------------------
def test_score_is_one_minus_probability_of_the_empty_text():
    s = EmptyMaskScore([7, 8, 9])
    for token, lp in ((7, math.log(0.9)), (8, math.log(0.5)), (9, math.log(0.8))):
        s.observe(token, lp)
    assert s.score == pytest.approx(1 - 0.9 * 0.5 * 0.8)
    assert s.expected() is None


def test_score_stops_at_divergence_and_ignores_later_steps():
    s = EmptyMaskScore([7, 8, 9])
    s.observe(7, math.log(0.9))
    s.observe(3, math.log(0.2))  # the model left the empty text: P(8) there was 0.2
    s.observe(9, math.log(0.01))  # not tracked any more
    assert s.score == pytest.approx(1 - 0.9 * 0.2)


def test_forced_tokens_count_as_certain_and_no_target_means_no_score():
    s = EmptyMaskScore([7, 8])
    s.observe(7, None)
    s.observe(8, math.log(0.25))
    assert s.score == pytest.approx(0.75)
    assert EmptyMaskScore([]).score is None


def test_answer_score_reads_the_answer_tokens_where_the_answer_starts():
    from omniad_edge.generate import AnswerProbe, AnswerScore

    probe = AnswerProbe(lead=(5, 6), anomalous=(10, 11), normal=(12,))
    s = AnswerScore(probe, lead_in_prompt=False)
    assert not s.due([]) and not s.due([5]) and not s.due([6, 5])
    assert s.due([1, 2, 5, 6])
    logits = np.full(16, -5.0, np.float32)
    logits[[10, 11, 12]] = [math.log(0.2), math.log(0.1), math.log(0.6)]  # only the ratio counts
    s.observe(logits)
    assert s.score == pytest.approx(0.3 / 0.9)
    assert not s.due([1, 2, 5, 6])  # once
    first = AnswerScore(probe, lead_in_prompt=True)
    assert first.due([]) and not first.due([10])
    logits[11] = np.nan
    first.observe(logits)
    assert first.score is None and first.done  # a broken step gives no score


# -- the tiny exported model --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inspector(tiny_bundle):
    from omniad_edge import Inspector

    return Inspector(tiny_bundle, mode="explain", threads=1, max_new_tokens=12)


@pytest.fixture(scope="module")
def manifest(tiny_bundle):
    return json.loads((tiny_bundle / "manifest.json").read_text())


def _prompt_ids(inspector, frame, task=None):
    from omniad_edge.frame import to_rgb

    image = inspector._encode(to_rgb(frame))
    return inspector._request(inspector._references, image, task).prompt.ids


def _hf_tokens(tiny_checkpoint, manifest, prompts, frames, n):
    pytest.importorskip("torch", reason="parity reference needs torch + transformers (extra `export`)")
    from helpers.hf_reference import hf_generate

    seqs, logits, _ = hf_generate(tiny_checkpoint, manifest, prompts, frames, max_new_tokens=n)
    return seqs, logits


def _strip_eos(seq, eos):
    return seq[:-1] if seq and seq[-1] in eos else seq


@pytest.mark.parametrize("size", [(64, 64), (90, 150)])
def test_generate_matches_transformers_greedy(inspector, tiny_checkpoint, manifest, size):
    frame = make_frame(*size, seed=size[0])
    ids, text = inspector.generate(frame, "Inspect the part.", max_new_tokens=12)
    prompt = _prompt_ids(inspector, frame, "Inspect the part.")
    (expected,), _ = _hf_tokens(tiny_checkpoint, manifest, [prompt], [[frame]], 12)
    assert ids == _strip_eos(expected, set(manifest["tokens"]["eos"]))
    assert text == inspector.tokenizer.decode(ids)


def test_run_tokens_match_transformers_and_score_matches_its_logits(inspector, tiny_checkpoint, manifest):
    frame = make_frame(80, 112, seed=3)
    result = inspector.run(frame)
    prompt = _prompt_ids(inspector, frame)
    (expected,), logits = _hf_tokens(tiny_checkpoint, manifest, [prompt], [[frame]], 12)
    generated = inspector.tokenizer.decode(_strip_eos(expected, set(manifest["tokens"]["eos"])))
    assert result.text == generated
    # score from transformers' own logits: P(empty text) along the greedy path until it leaves the empty text
    empty = inspector.generator.empty_mask_ids
    logp = 0.0
    for step, target in enumerate(empty):
        row = logits[step][0].astype(np.float64)
        logp += row[target] - (row.max() + np.log(np.exp(row - row.max()).sum()))
        if step >= len(expected) or expected[step] != target:
            break
    assert result.anomaly_probability == pytest.approx(1 - math.exp(logp), abs=1e-4)
    assert result.score == verdict_score(result.is_anomalous, result.anomaly_probability)


def test_prefix_cache_gives_the_same_tokens(tiny_bundle):
    from omniad_edge import Inspector

    refs = [make_frame(64, 64, seed=10), make_frame(56, 84, seed=11)]
    cached = Inspector(tiny_bundle, mode="explain", reference=refs, threads=1, max_new_tokens=10)
    plain = Inspector(tiny_bundle, mode="explain", reference=refs, threads=1, max_new_tokens=10,
                      prefix_cache=False)
    for seed in (1, 2, 3):
        frame = make_frame(70, 70, seed=seed)
        a, b = cached.run(frame), plain.run(frame)
        assert a.text == b.text and a.score == pytest.approx(b.score, abs=1e-5)
        assert a.options["prefix_tokens"] > 0 and b.options["prefix_tokens"] == 0
    assert a.prompt_tokens == b.prompt_tokens


def test_prefix_cache_with_references_matches_transformers(tiny_bundle, tiny_checkpoint, manifest):
    from omniad_edge import Inspector

    refs = [make_frame(64, 64, seed=20)]
    ins = Inspector(tiny_bundle, mode="explain", reference=refs, threads=1, max_new_tokens=8)
    frame = make_frame(64, 92, seed=21)
    ins.run(make_frame(64, 64, seed=22))  # warms the prefix
    ids, _ = ins.generate(frame, "Compare.", max_new_tokens=8)
    prompt = _prompt_ids(ins, frame, "Compare.")
    (expected,), _ = _hf_tokens(tiny_checkpoint, manifest, [prompt], [[refs[0], frame]], 8)
    assert ids == _strip_eos(expected, set(manifest["tokens"]["eos"]))


@pytest.mark.parametrize("target", ["ort", "ort-computed-rotary", "tensorrt"])
def test_both_targets_match_transformers_in_a_batch_after_a_reference_prefix(request, tiny_checkpoint, manifest,
                                                                               target):
    """The onnxruntime backend runs bundles of either target: the fused decoder (in-place BNSH cache, a batched
    multi-token step over the cached reference prefix, left padding; either rotary form) and the plain one give
    transformers' tokens."""
    from omniad_edge import Inspector

    bundle = request.getfixturevalue({"ort": "tiny_bundle", "ort-computed-rotary": "tiny_bundle_computed_rotary",
                                      "tensorrt": "tiny_bundle_plain"}[target])
    refs = [make_frame(64, 64, seed=50)]
    ins = Inspector(bundle, mode="explain", reference=refs, threads=1, max_new_tokens=8)
    assert ins.backend.kv_layout == ("BSHD" if target == "tensorrt" else "BNSH")
    if target != "tensorrt":  # the rotary form the manifest says is the one in the graph
        rotary = "RotaryEmbedding" if target == "ort-computed-rotary" else "MRotaryEmbedding"
        assert rotary in ins.bundle.graphs["decoder"]["contrib_ops"]
        import onnx

        graph = onnx.load(str(bundle / "decoder.onnx"), load_external_data=False).graph
        assert rotary in {n.op_type for n in graph.node}
    frames = [make_frame(64, 92, seed=51), make_frame(120, 70, seed=52)]
    results = ins.run_batch(frames)
    assert results[0].options["prefix_tokens"] > 0
    eos = set(manifest["tokens"]["eos"])
    for frame, result in zip(frames, results):
        (expected,), _ = _hf_tokens(tiny_checkpoint, manifest, [_prompt_ids(ins, frame)], [[refs[0], frame]], 8)
        assert result.text == ins.tokenizer.decode(_strip_eos(expected, eos))


def test_batch_equals_one_by_one(inspector):
    frames = [make_frame(64, 64, seed=30), make_frame(100, 60, seed=31), make_frame(84, 140, seed=32)]
    batch = inspector.run_batch(frames)
    single = [inspector.run(f) for f in frames]
    assert [b.text for b in batch] == [s.text for s in single]
    for b, s in zip(batch, single):
        assert b.score == pytest.approx(s.score, abs=1e-4)
        assert b.mask.shape == s.mask.shape


def test_streaming_chunks_and_length_stop(inspector):
    chunks = []
    result = inspector.run(make_frame(64, 64, seed=40), stream=chunks.append)
    assert "".join(chunks) == result.text
    assert result.finish_reason in ("eos", "length")
    if result.finish_reason == "length":
        assert result.generated_tokens == 12


def test_text_is_the_same_with_and_without_streaming(qwen_bundle):
    """Without a stream callback the text is decoded once at the end instead of token by token; both must give the
    same text (real byte-level vocabulary: random tokens often end inside a UTF-8 character)."""
    from omniad_edge import Inspector

    ins = Inspector(qwen_bundle, mode="explain", threads=1, max_new_tokens=16)
    for seed in range(60, 64):
        frame = make_frame(72, 100, seed=seed)
        chunks = []
        streamed = ins.run(frame, stream=chunks.append)
        plain = ins.run(frame)
        assert plain.text == streamed.text == "".join(chunks)
        assert plain.generated_tokens == streamed.generated_tokens > 0


def test_max_new_tokens_is_respected(inspector):
    ids, _ = inspector.generate(make_frame(64, 64, seed=41), "x", max_new_tokens=3)
    assert len(ids) <= 3


def test_timings_cover_every_stage(inspector):
    result = inspector.run(make_frame(64, 64, seed=42))
    for stage in ("preprocess", "vision", "prefill", "decode", "postprocess", "total"):
        assert result.timings[stage] >= 0
    parts = sum(result.timings[s] for s in ("preprocess", "vision", "prefill", "decode", "postprocess"))
    assert parts <= result.timings["total"] * 1.01 + 0.5


def test_real_vocabulary_bundle_matches_transformers(qwen_bundle, qwen_checkpoint):
    """Same parity with the real 151,936-row Qwen vocabulary and tokenizer (tied embeddings)."""
    from omniad_edge import Inspector

    manifest = json.loads((qwen_bundle / "manifest.json").read_text())
    ins = Inspector(qwen_bundle, mode="explain", threads=1, max_new_tokens=8)
    frame = make_frame(72, 100, seed=50)
    ids, _ = ins.generate(frame, "Inspect the part.", max_new_tokens=8)
    prompt = _prompt_ids(ins, frame, "Inspect the part.")
    (expected,), _ = _hf_tokens(qwen_checkpoint, manifest, [prompt], [[frame]], 8)
    assert ids == _strip_eos(expected, set(manifest["tokens"]["eos"]))


# -- native decode loop (C API step) against the Python loop -----------------------------------------------------
def _recorded(monkeypatch):
    """Wraps Generator.generate and _native_loop: -> (ids of every generation, number of native loops run)."""
    from omniad_edge.generate import Generator

    seen = {"ids": [], "loops": 0}
    generate, loop = Generator.generate, Generator._native_loop

    def recording_generate(self, *args, **kwargs):
        out = generate(self, *args, **kwargs)
        seen["ids"].append([(g.ids, g.finish_reason, g.score, g.forwards) for g in out])
        return out

    def counting_loop(self, call, logits):
        seen["loops"] += 1
        return loop(self, call, logits)

    monkeypatch.setattr(Generator, "generate", recording_generate)
    monkeypatch.setattr(Generator, "_native_loop", counting_loop)
    return seen


@pytest.mark.parametrize("mode, constrain", [("detect", False), ("explain", False), ("detect", True)],
                         ids=["detect", "explain", "detect-grammar"])
@pytest.mark.parametrize("sampling", [{}, {"temperature": 1.2, "top_p": 0.95, "seed": 7}], ids=["greedy", "sampled"])
def test_native_loop_gives_the_python_loops_tokens(mode, constrain, sampling, monkeypatch):
    """The reference model, one frame at a time and a batch: the native step (explain and detect: the whole token
    loop native, detect's Text-as-Mask stop included; grammar: llguidance's mask and forced runs in Python per token)
    gives the Python loop's ids, finish reasons and scores exactly."""
    if constrain:
        pytest.importorskip("llguidance", reason="grammar-constrained decoding needs the `grammar` extra")
    from omniad_edge import Inspector
    from omniad_edge.synth import make_sample

    frames = [make_sample(i, size, anomalous=i % 2 == 0).image for i, size in enumerate([(224, 224), (168, 280),
                                                                                          (196, 196)])]
    results = {}
    for native in (True, False):
        seen = _recorded(monkeypatch)
        inspector = Inspector(mode=mode, threads=1, max_new_tokens=48, constrain=constrain,
                              backend_options={"native": native}, **sampling)
        assert inspector.backend.describe()["decode_step"] == ("native" if native else "Python")
        texts = [inspector.run(f).text for f in frames] + [r.text for r in inspector.run_batch(frames)]
        results[native] = (seen["ids"], texts)
        assert (seen["loops"] > 0) == (native and not constrain)
        monkeypatch.undo()
    assert results[True] == results[False]
    assert any(len(ids) > 1 for gens in results[True][0] for ids, *_ in gens)
    if mode == "detect":  # the stop that ended detect's rows, natively too
        assert {reason for gens in results[True][0] for _, reason, *_ in gens} >= {"mask_closed"}


@pytest.mark.parametrize("unclean", ["every", "odd"])
def test_native_detect_hands_tokens_it_cannot_read_back_to_python(unclean, monkeypatch):
    """Tokens whose text the native Text-as-Mask stop cannot feed (pieces of a character: here made so by marking
    them in the table) hand their step back to the Python loop, which finishes it and lets the native loop go on:
    the tokens, finish reasons, scores and texts stay the Python loop's, for greedy and seeded sampling."""
    from omniad_edge import Inspector
    from omniad_edge.generate import Generator
    from omniad_edge.synth import make_sample

    text_table = Generator._text_table

    def marked(self):
        table = text_table(self)
        if not getattr(self, "_marked", False):
            data, offsets, clean = self.tokenizer.token_text(int(self._table.shape[0]))
            clean[:] = 0 if unclean == "every" else clean * (np.arange(len(clean)) % 2 == 0)
            from omniad_edge._native import TokenText
            self._token_text, self._marked = TokenText(data, offsets, clean), True
            table = self._token_text
        return table

    frames = [make_sample(i, (224, 224), anomalous=True).image for i in range(4)]
    for sampling in ({}, {"temperature": 1.3, "seed": 3}):
        results = {}
        for native in (True, False):
            seen = _recorded(monkeypatch)
            monkeypatch.setattr(Generator, "_text_table", marked)
            inspector = Inspector(mode="detect", threads=1, max_new_tokens=40, backend_options={"native": native},
                                  **sampling)
            texts = [inspector.run(f).text for f in frames]
            results[native] = (seen["ids"], texts)
            if native:  # handed back and entered again within a frame
                assert seen["loops"] > len(frames)
            monkeypatch.undo()
        assert results[True] == results[False]
        assert any(len(ids) > 2 for gens in results[True][0] for ids, *_ in gens)


@pytest.mark.parametrize("mode", ["explain", "detect"])
def test_native_loop_raises_the_samplers_error_on_nan_logits(tiny_bundle, mode, monkeypatch):
    """NaN logits reached inside the native loop (detect: with its Text-as-Mask stop): the sampler's ValueError,
    as in the Python loop."""
    from omniad_edge import Inspector

    errors = {}
    for native in (True, False):
        seen = _recorded(monkeypatch)
        inspector = Inspector(tiny_bundle, mode=mode, threads=1, max_new_tokens=8,
                              backend_options={"native": native})
        frame = make_frame(64, 64, seed=50)
        inspector.run(frame)
        ids = seen["ids"][-1][0][0]
        assert len(ids) > 1 and seen["loops"] == int(native)
        generator = inspector.generator
        table = np.array(generator._table)
        table[ids[0]] = np.nan  # the first generated token's embedding: the next step's logits are NaN
        generator._table = table
        with pytest.raises(ValueError, match="NaN") as info:
            inspector.run(frame)
        errors[native] = str(info.value)
        monkeypatch.undo()
    assert errors[True] == errors[False]


def test_a_request_past_the_decoders_positions_is_refused_before_it_runs(tiny_bundle, tmp_path):
    # a fused decoder's rotary tables end at graphs.decoder.rotary_positions: the Generator refuses a prompt plus
    # token budget that would need a position past them, with a typed error, instead of an error inside the graph
    import shutil

    from omniad_edge import Inspector, PositionError
    from omniad_edge.frame import to_rgb
    from omniad_edge.positions import rope_positions

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    ins = Inspector(bundle, mode="explain", threads=1)
    frame = make_frame(64, 64, seed=43)
    request = ins._request(ins._references, ins._encode(to_rgb(frame)), "x")
    _, delta = rope_positions(request.prompt.ids, list(request.grids), ins.bundle.tokens,
                              ins.bundle.model["vision"]["spatial_merge_size"])
    # 4 new tokens feed 3 back, the last at len + delta + 2: a table of len + delta + 3 positions just holds them
    m = json.loads((bundle / "manifest.json").read_text())
    m["graphs"]["decoder"]["rotary_positions"] = len(request.prompt.ids) + int(delta) + 3
    (bundle / "manifest.json").write_text(json.dumps(m))
    ins = Inspector(bundle, mode="explain", threads=1)
    ids, _ = ins.generate(frame, "x", max_new_tokens=4)
    assert 0 < len(ids) <= 4
    with pytest.raises(PositionError, match="max_new_tokens=5 need position"):
        ins.generate(frame, "x", max_new_tokens=5)


# -- speculative decoding (drafting.NgramDrafter) -----------------------------------------------------------------
@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_speculative_decoding_writes_the_plain_text_in_fewer_runs(native, monkeypatch):
    """The reference model on frames whose outputs repeat (good parts, the same defect twice): drafts from the earlier
    outputs give the plain loop's text, finish reason and score, and the repeats take a fraction of the runs."""
    from omniad_edge import Inspector
    from omniad_edge.synth import make_sample

    frames = [make_sample(i, anomalous=i % 3 == 2).image for i in range(6)] * 2
    assert Inspector(mode="detect", speculative=True).options["speculative"] is False  # detect stays plain
    runs = {}
    for speculative in (False, True):
        seen = record_generations(monkeypatch)
        ins = Inspector(mode="explain", threads=1, speculative=speculative, backend_options={"native": native})
        assert ins.options["speculative"] is speculative
        results = [ins.run(f) for f in frames]
        runs[speculative] = (results, list(seen))
        monkeypatch.undo()
    (plain, plain_gens), (spec, spec_gens) = runs[False], runs[True]
    for a, b, ga, gb in zip(plain, spec, plain_gens, spec_gens):
        assert (a.text, a.finish_reason, a.is_anomalous) == (b.text, b.finish_reason, b.is_anomalous)
        assert b.anomaly_probability == pytest.approx(a.anomaly_probability, abs=1e-5)
        assert ga.ids == gb.ids and ga.drafted_tokens == 0 and gb.accepted_drafts <= gb.drafted_tokens
        # every token is a run's own or a confirmed draft (one more when the last token taken was a draft)
        assert gb.forwards + gb.accepted_drafts - ga.forwards in (0, 1)
    repeats = spec_gens[6:]
    assert sum(g.forwards for g in repeats) * 2 < sum(g.forwards for g in plain_gens[6:])
    assert all(g.accepted_drafts > 0 for g in repeats if len(g.ids) > 3)


def test_drafts_right_or_wrong_never_change_the_tokens(tiny_bundle, monkeypatch):
    """The tiny random model (long, arbitrary outputs): an oracle's drafts are all taken, up to 15 per run; a liar's
    are all refused and cost no token; the token budget holds inside a run of drafts."""
    from omniad_edge import Inspector

    frame = make_frame(72, 96, seed=5)
    ins = Inspector(tiny_bundle, mode="explain", threads=1, max_new_tokens=40, speculative=False)
    plain, _ = ins.generate(frame, "Inspect the part.")
    assert len(plain) == 40
    spec = Inspector(tiny_bundle, mode="explain", threads=1, max_new_tokens=40, speculative=True)
    seen = record_generations(monkeypatch)
    oracle, liar = oracle_and_liar(plain)
    for drafter, budget in ((oracle, 40), (liar, 40), (oracle, 7)):
        spec.generator.drafter = drafter
        ids, _ = spec.generate(frame, "Inspect the part.", max_new_tokens=budget)
        assert ids == plain[:budget]
    taken, refused, short = seen
    assert taken.accepted_drafts == taken.drafted_tokens == 39 - taken.forwards and taken.forwards <= 39 // 16 + 1
    assert refused.accepted_drafts == 0 and refused.forwards == 39
    assert short.forwards + short.accepted_drafts == 6 and short.drafted_tokens <= 6


def test_speculation_steps_aside_where_it_would_not_be_exact(tiny_bundle, tmp_path, monkeypatch):
    """Sampling, batches, a grammar or a bundle without draft logits decode plainly (no drafts)."""
    import shutil

    from omniad_edge import Inspector

    frames = [make_frame(64, 64, seed=s) for s in (1, 2)]
    plain = Inspector(tiny_bundle, mode="explain", threads=1, max_new_tokens=8)
    oracle, _ = oracle_and_liar(plain.generate(frames[0], "Inspect the part.")[0])
    seen = record_generations(monkeypatch)
    sampled = Inspector(tiny_bundle, mode="explain", threads=1, max_new_tokens=8, temperature=0.8, seed=1,
                        speculative=True)
    sampled.generator.drafter = oracle
    sampled.run(frames[0])
    spec = Inspector(tiny_bundle, mode="explain", threads=1, max_new_tokens=8, speculative=True)
    spec.generator.drafter = oracle
    assert [r.text for r in spec.run_batch(frames)] == [r.text for r in plain.run_batch(frames)]
    try:
        import llguidance  # noqa: F401
    except ImportError:  # the grammar case needs the `grammar` extra; the others still ran
        llguidance = None
    if llguidance is not None:
        constrained = Inspector(tiny_bundle, mode="explain", threads=1, max_new_tokens=8, constrain=True,
                                speculative=True)
        constrained.generator.drafter = oracle
        constrained.run(frames[0])
    assert len(seen) >= 4 and all(g.drafted_tokens == 0 for g in seen)

    old = tmp_path / "old"
    shutil.copytree(tiny_bundle, old)
    m = json.loads((old / "manifest.json").read_text())
    del m["graphs"]["decoder"]["draft_logits"]  # as bundles exported before the output existed
    (old / "manifest.json").write_text(json.dumps(m))
    assert Inspector(old, threads=1, speculative=True).options["speculative"] is False
