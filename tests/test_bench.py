"""omniad_edge.bench: statistics, table formatting, argument validation, the loop-overhead split, the result
schema. Logic only: no assertion here depends on how fast anything runs."""
from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omniad_edge import bench
from omniad_edge.bench import BenchError
from omniad_edge.errors import OmniADError

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


# -- statistics ------------------------------------------------------------------------------------------------
def test_percentile_by_hand():
    # ranks 0..3 over [1, 2, 3, 4]: p50 at rank 1.5 -> 2.5; p90 at rank 2.7 -> 3.7; p0/p100 are the ends
    values = [4.0, 1.0, 3.0, 2.0]
    assert bench.percentile(values, 50) == pytest.approx(2.5)
    assert bench.percentile(values, 90) == pytest.approx(3.7)
    assert bench.percentile(values, 0) == 1.0
    assert bench.percentile(values, 100) == 4.0
    assert bench.percentile([7.0], 99) == 7.0


@settings(max_examples=200, deadline=None)
@given(st.lists(finite, min_size=1, max_size=50), st.floats(min_value=0, max_value=100))
def test_percentile_matches_numpy(values, q):
    assert bench.percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-9, abs=1e-6)


@settings(max_examples=100, deadline=None)
@given(st.lists(finite, min_size=1, max_size=50))
def test_summary_is_ordered_and_bounded(values):
    s = bench.summarize(values)
    assert s["n"] == len(values)
    assert s["min"] <= s["p50"] <= s["p90"] <= s["p99"] <= s["max"]
    assert s["min"] == min(values) and s["max"] == max(values)
    assert s["min"] - 1e-6 <= s["mean"] <= s["max"] + 1e-6


def test_summary_by_hand():
    s = bench.summarize([10, 20, 30, 40, 50, 60, 70, 80, 90, 100])
    assert s["p50"] == pytest.approx(55.0)
    assert s["p90"] == pytest.approx(91.0)  # rank 8.1 -> 90 + 0.1 * 10
    assert s["p99"] == pytest.approx(99.1)  # rank 8.91
    assert s["mean"] == pytest.approx(55.0)


@pytest.mark.parametrize("values, needle", [([], "empty"), ([1.0, math.nan], "finite"),
                                            ([1.0, math.inf], "finite"), (["3"], "numbers"),
                                            ([True, 2.0], "numbers"), ("123", "sequence"), (5, "sequence")])
def test_summary_rejects_bad_samples(values, needle):
    with pytest.raises(BenchError, match=needle):
        bench.summarize(values)


@pytest.mark.parametrize("q", [-1, 100.5])
def test_percentile_rejects_q_out_of_range(q):
    with pytest.raises(BenchError, match="q must be in"):
        bench.percentile([1.0, 2.0], q)


def test_bench_error_is_typed():
    assert issubclass(BenchError, OmniADError) and issubclass(BenchError, ValueError)


# -- table -----------------------------------------------------------------------------------------------------
def test_markdown_table_layout():
    text = bench.markdown_table(["stage", "p50"], [["prefill", 12.3456], ["decode", None]], digits=2)
    lines = text.splitlines()
    assert len(lines) == 4
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["stage", "p50"]
    assert lines[1].replace(" ", "") == "|-------|----:|"  # text column plain, number column right aligned
    assert [c.strip() for c in lines[2].strip("|").split("|")] == ["prefill", "12.35"]
    assert [c.strip() for c in lines[3].strip("|").split("|")] == ["decode", "—"]
    assert len({len(line) for line in lines}) == 1  # columns padded to one width


def test_markdown_table_escapes_pipes_and_newlines():
    text = bench.markdown_table(["name"], [["a|b\nc"]])
    assert text.splitlines()[2] == "| a\\|b c |"


def test_markdown_table_rejects_ragged_rows():
    with pytest.raises(BenchError, match="row 1 has 1 cells, the header has 2"):
        bench.markdown_table(["a", "b"], [[1, 2], [3]])
    with pytest.raises(BenchError, match="header"):
        bench.markdown_table([], [])


# -- options and command line ------------------------------------------------------------------------------------
GOOD = dict(frames=3, warmup=0, mode="detect", size=(224, 224), max_new_tokens=None, references=0, threads=None)


@pytest.mark.parametrize("key, value, needle", [
    ("frames", 0, "frames must be an int >= 1"), ("frames", True, "frames"), ("frames", 2.0, "frames"),
    ("warmup", -1, "warmup must be an int >= 0"), ("mode", "fast", "mode must be 'detect' or 'explain'"),
    ("size", (16, 224), "size must be"), ("size", (224,), "size must be"), ("size", "224", "size must be"),
    ("max_new_tokens", 0, "max_new_tokens"), ("references", -2, "references"), ("threads", -1, "threads")])
def test_check_options_names_the_bad_argument(key, value, needle):
    with pytest.raises(BenchError, match=needle):
        bench.check_options(**{**GOOD, key: value})


def test_check_options_accepts_good_values():
    bench.check_options(**GOOD)
    bench.check_options(**{**GOOD, "max_new_tokens": 5, "threads": 0, "size": [32, 4096]})


def test_run_bench_validates_before_loading_anything(tmp_path):
    # a bad option fails fast even with a bundle path that does not exist
    with pytest.raises(BenchError, match="frames"):
        bench.run_bench(tmp_path / "missing", frames=0)


def test_parser_defaults_and_types():
    args = bench.build_parser().parse_args([])
    assert (args.bundle, args.frames, args.warmup, args.mode, args.provider, args.json) == (None, 20, 2, "detect",
                                                                                           None, None)
    args = bench.build_parser().parse_args(["B", "--frames", "4", "--warmup", "0", "--mode", "explain",
                                            "--provider", "cuda", "cpu", "--size", "64", "96", "--json", "o.json"])
    assert (args.bundle, args.frames, args.warmup, args.mode) == ("B", 4, 0, "explain")
    assert args.provider == ["cuda", "cpu"] and args.size == [64, 96] and args.json == "o.json"


@pytest.mark.parametrize("argv, needle", [(["--frames", "0"], "--frames: expected an int >= 1, got 0"),
                                          (["--warmup", "x"], "--warmup: expected an int >= 0, got 'x'"),
                                          (["--mode", "fast"], "--mode: invalid choice"),
                                          (["--size", "8", "8"], "--size: expected an int >= 32")])
def test_parser_rejects_bad_arguments(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_add_parser_registers_bench():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    bench.add_parser(sub)
    args = parser.parse_args(["bench", "B", "--frames", "2"])
    assert args.run is bench.main and args.frames == 2 and args.bundle == "B"


def test_cli_routes_bench_arguments(capsys):
    from omniad_edge import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--frames", "0"])
    assert exc.value.code == 2
    assert "bench: error: argument --frames: expected an int >= 1, got 0" in capsys.readouterr().err


# -- the loop-overhead split -----------------------------------------------------------------------------------
def test_forward_timer_records_the_backend_hook():
    class Backend:  # any backend: the hook is an attribute of the interface
        on_forward = None

    backend = Backend()
    timer = bench.ForwardTimer(backend)
    assert backend.on_forward is timer
    backend.on_forward(7, 0.010, 0.008)  # prefill: 7 tokens
    backend.on_forward(1, 0.005, 0.004)
    backend.on_forward(1, 0.006, 0.004)
    assert [c[0] for c in timer.calls] == [7, 1, 1]
    assert timer.calls[1][1:] == pytest.approx((5.0, 4.0))  # forward ms, graph ms
    inside, steps = timer.decode_session_ms()
    assert steps == 2 and inside == pytest.approx(8.0)
    timer.reset()
    assert timer.decode_session_ms() == (0.0, 0)


def test_decode_speed_counts_forwards_not_tokens():
    # a detect frame: 2 tokens, the first sampled from the prefill's logits, so one decoder forward in 10 ms
    assert bench.decode_speed(10.0, 1) == {"ms_per_token": 10.0, "tokens_per_s": 100.0}
    assert bench.decode_speed(62.5, 5) == {"ms_per_token": 12.5, "tokens_per_s": 80.0}
    assert bench.decode_speed(0.4, 0) is None  # one token: no forward ran
    for forwards, needle in ((-1, "forwards"), (1.0, "forwards"), (True, "forwards")):
        with pytest.raises(bench.BenchError, match=needle):
            bench.decode_speed(1.0, forwards)
    with pytest.raises(bench.BenchError, match="decode_ms"):
        bench.decode_speed(float("nan"), 3)


# -- helpers ----------------------------------------------------------------------------------------------------
def test_machine_and_libraries():
    info = bench.machine_info()
    assert info["logical_cores"] >= 1 and 1 <= info["usable_cores"] <= info["logical_cores"]
    assert isinstance(info["cpu"], str) and info["cpu"]
    libs = bench.library_versions()
    assert libs["numpy"] == np.__version__
    assert "omniad-edge" in libs
    assert "no-such-distribution-xyz" not in bench.library_versions(["no-such-distribution-xyz"])


def test_peak_rss_grows_with_a_large_allocation():
    # In a fresh process; Linux carries ru_maxrss across exec from the forking parent, so the block must be larger
    # than whatever peak the child starts with for the peak to move.
    import subprocess
    import sys

    code = ("import numpy as np; from omniad_edge.bench import peak_rss_mib; before = peak_rss_mib(); "
            "block = np.ones(int(before + 256) * 2**20 // 8); print(before, peak_rss_mib(), block.sum() > 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    before, after, touched = out.stdout.split()
    # the block alone is before + 256 MiB resident, so the peak ends at least 256 MiB above the old one
    assert touched == "True" and 5 < float(before) and float(after) >= float(before) + 256


def _result():
    stage = {"n": 3, "min": 1.0, "p50": 2.0, "p90": 3.0, "p99": 4.0, "max": 4.0, "mean": 2.0}
    return {"bundle": {"name": "b", "precision": "fp32"}, "provider": "CPUExecutionProvider",
            "options": {"frames": 3, "warmup": 1, "size": [224, 224], "mode": "detect", "max_new_tokens": 8,
                        "references": 0, "threads": None},
            "stages_ms": {"prefill": stage, "total": {**stage, "p50": 20.0}},
            "tokens_per_s": {**stage, "p50": 50.0}, "decode_overhead_pct": {**stage, "p50": 1.5},
            "generated_tokens": {**stage, "p50": 8.0}, "decode_forwards": {**stage, "p50": 7.0},
            "prompt_tokens": {**stage, "p50": 100.0},
            "finish_reasons": {"length": 3}, "tam_decode_source": [], "peak_rss_mib": 300.0,
            "device_memory_mib": None,
            "machine": {"cpu": "CPU X", "usable_cores": 2, "logical_cores": 2, "os": "Linux"},
            "libraries": {"numpy": "2"}}


def test_format_report_lists_the_measured_stages_only():
    text = bench.format_report(_result())
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| -")]
    assert [r.split("|")[1].strip() for r in rows] == ["stage (ms)", "prefill", "end to end"]
    assert "20.000" in rows[2]
    assert "50.0 tokens/s" in text and "1.50%" in text and "CPU X" in text and "no device memory" in text
    assert "(7 per frame, p50)" in text and "warning" not in text  # no device state recorded: no lines about it
    state = {"kind": "jetson", "start": {"cpu": {"load_average": [0.5, 0.4, 0.3]},
                                         "jetson": {"power_mode": {"name": "15W", "id": 0}, "clocks_locked": False,
                                                    "gpu_freq_mhz": {"cur": 624.75}}},
             "energy": {"per_frame_j": 0.25, "source": "VDD_IN, 40 samples"},
             "missing": {"emc": "no access"}, "warnings": ["Jetson clocks are not locked"]}
    text = bench.format_report({**_result(), "device_state": state})
    assert ("- device jetson, power mode 15W (0), clocks NOT locked, GPU 625 MHz, load 0.50/0.40/0.30, "
            "energy 0.250 J per frame (VDD_IN, 40 samples)") in text
    assert "- not read: emc (no access)" in text and "- **warning**: Jetson clocks are not locked" in text


@pytest.mark.slow
def test_run_bench_on_the_tiny_bundle(tiny_bundle, tmp_path, capsys):
    result = bench.run_bench(tiny_bundle, frames=2, warmup=0, max_new_tokens=3, size=(64, 64), threads=1)
    json.dumps(result)  # JSON-ready
    assert result["options"]["frames"] == 2 and result["provider"] == "CPUExecutionProvider"
    assert result["spinning"] is False  # omniad_edge's default: ONNX Runtime's threads sleep between ops
    assert result["decode_step"] == "native"  # the CPU provider runs the C API decode step
    for stage in ("preprocess", "vision", "prefill", "tam_decode", "postprocess", "total"):
        assert result["stages_ms"][stage]["n"] == 2
    assert 1 <= result["generated_tokens"]["max"] <= 3
    # decode speed from forwards: one fewer than the tokens when no forced tokens are fed together
    assert result["decode_forwards"]["max"] <= result["generated_tokens"]["max"] - 1
    if result["tokens_per_s"] is not None:
        assert result["tokens_per_s"]["n"] == result["stages_ms"]["decode_per_token"]["n"]
    state = result["device_state"]
    assert state["kind"] in ("cpu", "nvidia-gpu", "jetson") and isinstance(state["warnings"], list)
    assert state["start"]["cpu"]["load_average"] and ("energy" in state["missing"]) == (state["energy"] is None)
    stages = result["stages_ms"]
    # end to end holds every other stage of the same frames
    assert stages["total"]["min"] >= stages["prefill"]["min"]
    out = tmp_path / "r.json"
    assert bench.main([str(tiny_bundle), "--frames", "1", "--warmup", "0", "--max-new-tokens", "2",
                       "--size", "64", "64", "--spinning", "--json", str(out), "--markdown",
                       str(tmp_path / "r.md")]) == 0
    printed = capsys.readouterr().out
    assert "| end to end" in printed and printed.startswith((tmp_path / "r.md").read_text().strip())
    assert "spinning on" in printed
    assert json.loads(out.read_text())["stages_ms"]["total"]["n"] == 1
    assert json.loads(out.read_text())["spinning"] is True
    # explain mode with a reference image (prefix cache path)
    result = bench.run_bench(tiny_bundle, frames=1, warmup=1, mode="explain", max_new_tokens=2, size=(64, 64),
                             references=1, threads=1)
    assert result["options"]["mode"] == "explain" and result["options"]["references"] == 1
    assert result["stages_ms"]["prefill"]["n"] == 1


# -- benchmarks/ helpers (pure arithmetic and bookkeeping; no model is loaded) ---------------------------------
def _benchmarks_module(name):
    import importlib
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for p in (str(root), str(root / "benchmarks")):
        if p not in sys.path:
            sys.path.insert(0, p)
    return importlib.import_module(name)


def test_graph_step_alternates_rounds_in_rotating_order_and_pauses_only_when_spinning(monkeypatch):
    import types

    graph_step = _benchmarks_module("graph_step")
    compare = _benchmarks_module("compare")
    calls, pauses = [], []
    speed = {"a": 2.0, "b": 1.0, "c": 3.0}  # ms a step; b is twice as fast as a in every round

    def stepper(path, past, threads, spinning, head_dim):
        return lambda n: calls.append(path) or [speed[path]] * n

    monkeypatch.setattr(graph_step, "_stepper", stepper)
    monkeypatch.setattr(graph_step.time, "sleep", pauses.append)
    args = types.SimpleNamespace(past=140, threads=2, head_dim=64, rounds=3, repeats=4)
    out = graph_step.time_graphs({"a": "a", "b": "b", "c": "c"}, args, spinning=False)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"] and pauses == []
    assert out["b"]["ratio_vs_first"] == 0.5 and out["c"]["ratio_vs_first"] == 1.5
    assert out["a"]["repeats"] == 12 and out["a"]["round_medians_ms"] == [2.0, 2.0, 2.0]
    graph_step.time_graphs({"a": "a", "b": "b"}, args, spinning=True)
    assert pauses == [compare.SPIN_PAUSE_S] * 6  # one after each graph's turn


def test_first_step_pairs_each_past_input_with_its_present_output():
    first_step = _benchmarks_module("first_step")

    class Session:  # the two naming schemes of the decoders first_step.py times (ours, onnxruntime-genai's)
        def __init__(self, inputs, outputs):
            self.inputs, self.outputs = inputs, outputs

        def get_inputs(self):
            return [type("I", (), {"name": n}) for n in self.inputs]

        def get_outputs(self):
            return [type("O", (), {"name": n}) for n in self.outputs]

    ours = Session(["inputs_embeds", "past_key.0", "past_value.0", "past_key.11", "past_value.11"],
                   ["logits", "present_value.11", "present_key.11", "present_value.0", "present_key.0"])
    assert first_step._cache_names(ours) == [("past_key.0", "present_key.0"), ("past_value.0", "present_value.0"),
                                             ("past_key.11", "present_key.11"),
                                             ("past_value.11", "present_value.11")]
    genai = Session(["past_key_values.1.key", "past_key_values.10.value"], ["logits", "present.10.value",
                                                                          "present.1.key", "present.1.value"])
    assert first_step._cache_names(genai) == [("past_key_values.1.key", "present.1.key"),
                                              ("past_key_values.10.value", "present.10.value")]
    with pytest.raises(SystemExit, match="cannot pair past_key.2"):
        first_step._cache_names(Session(["past_key.2"], ["logits", "present_key.3"]))


def test_roofline_arithmetic(tmp_path):
    roofline = _benchmarks_module("roofline")
    model = {"num_layers": 24, "num_key_value_heads": 2, "head_dim": 64}
    # K and V, 24 layers, 100 positions, 2 heads of 64 floats: 2 * 24 * 100 * 2 * 64 * 4 bytes
    assert roofline.kv_bytes(model, 100) == 2_457_600
    manifest = {"model": model, "graphs": {"decoder": {"path": "decoder.onnx"}},
                "files": {"decoder.onnx": {"bytes": 1_000}, "decoder.onnx.data": {"bytes": 999_000},
                          "vision.onnx": {"bytes": 7}, "embed_tokens.npy": {"bytes": 5_000_000}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert roofline.decoder_weight_bytes(tmp_path) == 1_000_000  # the embedding table is not read per step
    r = roofline.roofline(tmp_path, 100, decode_ms=2.0, bandwidth_gbps=3.4576)
    assert r["bytes_per_token"] == 3_457_600
    assert r["bound_ms"] == pytest.approx(1.0)  # 3.4576e6 bytes at 3.4576e9 bytes/s
    assert r["percent_of_bound"] == pytest.approx(50.0)
    assert r["achieved_gbps"] == pytest.approx(1.7288)


def test_compare_token_check_and_verdicts():
    compare = _benchmarks_module("compare")
    eos = {9}
    same = {"omniad": {"rows": [{"tokens": [1, 2, 3]}, {"tokens": [4, 9, 7]}]},
            "genai": {"rows": [{"tokens": [1, 2, 3]}, {"tokens": [4, 9]}]}}  # text after eos does not count
    report = compare.check_tokens(same, eos)
    assert report["identical"] and report["tokens_per_frame"] == [3, 1]
    differ = {"omniad": {"rows": [{"tokens": [1, 2, 3, 4]}]}, "genai": {"rows": [{"tokens": [1, 2, 5, 4]}]}}
    report = compare.check_tokens(differ, eos)
    assert not report["identical"]
    assert report["mismatches"][0]["first_difference_at"] == 2 and report["mismatches"][0]["runtime"] == "genai"
    assert compare.verdict("decode_vs_genai", 0.59) == "met"
    assert compare.verdict("decode_vs_genai", 1.2) == "missed by 1.50x"  # limit 0.8
    assert compare.verdict("percent_of_bound", 89.1) == "missed (89% < 90%)"
    assert compare.verdict("percent_of_bound", 90.0) == "met"
    int4 = compare.targets_for("int4")
    assert compare.verdict("percent_of_bound", 61.0, int4) == "met" and int4["decode_vs_genai"][0] == 0.8
    assert compare.verdict("loop_overhead_pct", None) == "not measured"
    # --e2e-target: the reference model is judged against 0.2, the rest as before
    ref = compare.targets_for("fp32", 0.2)
    assert compare.verdict("e2e_vs_transformers", 0.3, ref) == "missed by 1.50x"
    assert compare.verdict("e2e_vs_transformers", 0.3) == "met"  # 0.42 by default
    assert ref["decode_vs_genai"] == compare.TARGETS["decode_vs_genai"]


def test_compare_e2e_target_is_the_one_reported(capsys):
    compare = _benchmarks_module("compare")
    rows = [{"warmup": False, "total": 10.0, "decode_per_step": 1.0, "prefill": 2.0, "preprocess": 1.0, "vision": 3.0}]
    t_rows = [{"warmup": False, "total": 40.0, "decode_per_step": 2.0, "prefill": 4.0, "preprocess": 2.0,
               "vision": 6.0}]
    res = {"omniad": {"rows": rows}, "transformers": {"rows": t_rows},
           "options": {"precision": "fp32", "mode": "detect", "e2e_target": 0.2}}
    target = compare.summarise(res)["targets"]["e2e_vs_transformers"]
    assert (target["value"], target["limit"], target["verdict"]) == (0.25, "<= 0.2", "missed by 1.25x")
    with pytest.raises(SystemExit):
        compare.main(["models", "--e2e-target", "0"])
    assert "--e2e-target must be a ratio > 0" in capsys.readouterr().err


def test_genai_wrapper_graphs_do_the_host_embedding(tmp_path):
    """The embedding graph given to onnxruntime-genai must equal DESIGN.md's host embedding: table rows, with the
    image embeddings written over the image-pad rows in order; the vision graph passes its input through."""
    pytest.importorskip("onnx", reason="onnx builds the wrapper graphs")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime runs the wrapper graphs")
    genai_wrap = _benchmarks_module("genai_wrap")
    builder = tmp_path / "builder"
    builder.mkdir()
    (builder / "model.onnx").write_bytes(b"decoder")  # linked as is, never loaded here
    (builder / "genai_config.json").write_text(json.dumps({"model": {"type": "qwen2_5_vl", "decoder": {}}}))
    table = np.arange(10 * 4, dtype=np.float32).reshape(10, 4)
    np.save(tmp_path / "embed.npy", table)
    out = genai_wrap.wrap_genai_model(builder, tmp_path / "wrapped", tmp_path / "embed.npy", image_pad=7,
                                      vision_start=6, vision={"spatial_merge_size": 2, "patch_size": 14,
                                                              "window_size": 112})
    config = json.loads((out / "genai_config.json").read_text())["model"]
    assert (config["image_token_id"], config["vision_start_token_id"]) == (7, 6)
    assert config["embedding"]["filename"] == "embedding.onnx" and config["vision"]["filename"] == "vision.onnx"
    assert (out / "model.onnx").read_bytes() == b"decoder"
    genai_wrap.set_session_options(out, 2)  # omniad_edge's settings: same threads, spinning off
    for section in ("decoder", "embedding", "vision"):
        options = json.loads((out / "genai_config.json").read_text())["model"][section]["session_options"]
        assert options["intra_op_num_threads"] == 2 and options["inter_op_num_threads"] == 1
        assert options["session.intra_op.allow_spinning"] == options["session.inter_op.allow_spinning"] == "0"
    genai_wrap.set_session_options(out, 2, spinning=True)  # on: between the ops of a run only, as omniad_edge's
    options = json.loads((out / "genai_config.json").read_text())["model"]["decoder"]["session_options"]
    assert options["session.intra_op.allow_spinning"] == options["session.force_spinning_stop"] == "1"

    ids = np.array([[1, 6, 7, 7, 2, 7]], np.int64)
    image = -np.arange(3 * 4, dtype=np.float32).reshape(3, 4) - 1  # distinct from every table row
    emb = ort.InferenceSession(str(out / "embedding.onnx"), providers=["CPUExecutionProvider"])
    got = emb.run(None, {"input_ids": ids, "image_features": image})[0]
    expected = table[ids[0]].copy()
    expected[[2, 3, 5]] = image
    np.testing.assert_array_equal(got[0], expected)
    # decode steps: no image pads, no image rows
    got = emb.run(None, {"input_ids": np.array([[3]], np.int64), "image_features": np.zeros((0, 4), np.float32)})[0]
    np.testing.assert_array_equal(got[0], table[[3]])
    vis = ort.InferenceSession(str(out / "vision.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(vis.run(None, {"pixel_values": image,
                                                 "image_grid_thw": np.array([[1, 2, 6]], np.int64)})[0], image)


def test_native_benchmark_numpy_top_p_keeps_the_float64_nucleus():
    """The float32 argpartition baseline of bench_native.py must sample what top-p means, or its time is no
    baseline: every draw lies in the nucleus of the plain float64 definition, including the growing-k path."""
    bench_native = _benchmarks_module("bench_native")
    rng = np.random.default_rng(0)
    x = np.random.default_rng(3).standard_normal(5000).astype(np.float32)
    x[:3] += 9.0
    for logits in (x, x * np.float32(0.05)):  # peaked (nucleus of a few) and flat (k must grow past 64)
        n = bench_native.nucleus_size_f64(logits, 0.8, 0.9)
        order = np.argsort(-logits.astype(np.float64), kind="stable")
        nucleus = set(order[:n].tolist())
        draws = [bench_native.np_top_p(logits, 0.8, 0.9, rng) for _ in range(200)]
        assert set(draws) <= nucleus
        assert len(set(draws)) > (1 if n > 1 else 0)
    assert bench_native.nucleus_size_f64(x * np.float32(0.05), 0.8, 0.9) > 64
