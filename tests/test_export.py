"""export: bundle layout per DESIGN.md, parity with transformers generate(), precisions, bad input.

Parity: the bundle run by a plain numpy + onnxruntime loop (helpers/reference.py) gives the same greedy tokens as
transformers' generate(), and logits within 1e-4 of the largest logit (float32 graphs measure ~1e-6)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers.frames import make_frame

pytest.importorskip("torch", reason="the exporter needs torch (the `export` extra)")
pytest.importorskip("onnxruntime", reason="running bundles needs onnxruntime")

from export import ExportOptions, export_bundle  # noqa: E402
from export.cli import main as cli_main  # noqa: E402
from helpers.cache import cached_dir, source_key  # noqa: E402
from helpers.reference import BundleRunner  # noqa: E402
from omniad_edge.errors import ExportError  # noqa: E402

SIZES = [(90, 150), (200, 120), (60, 260)]  # non-square; 15, 28 and 18 image tokens
LOGIT_RTOL = 1e-4
MAX_NEW = 12


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def _assert_parity(bundle, checkpoint, frames_per_seq, max_new=MAX_NEW):
    from helpers.hf_reference import hf_generate

    runner = BundleRunner(bundle)
    prompts = [runner.prompt(frames) for frames in frames_per_seq]
    ours = runner.generate(prompts, max_new)
    ref_tokens, ref_logits, ref_grids = hf_generate(checkpoint, runner.manifest, [p.input_ids for p in prompts],
                                                    frames_per_seq, max_new)
    ours_grids = [im.grid_thw for p in prompts for im in p.images]
    assert ref_grids.tolist() == [list(g) for g in ours_grids]
    assert ours.tokens == ref_tokens
    for step, (a, b) in enumerate(zip(ours.logits, ref_logits)):
        for row in range(a.shape[0]):
            if step < len(ref_tokens[row]):  # rows past their eos hold padding steps
                assert _rel(a[row], b[row]) < LOGIT_RTOL, (step, row, _rel(a[row], b[row]))
    return ours


# --- layout --------------------------------------------------------------------------------------------------

def test_manifest_follows_design(tiny_bundle, tiny_checkpoint):
    m = json.loads((tiny_bundle / "manifest.json").read_text())
    assert m["format"] == "omniad-edge-bundle" and m["format_version"] == 1 and m["precision"] == "fp32"
    for key in ("name", "model", "tokens", "preprocess", "prompt", "output", "graphs", "files", "embed_tokens",
                "tokenizer", "exporter"):
        assert key in m, key
    cfg = json.loads((tiny_checkpoint / "config.json").read_text())
    text = cfg.get("text_config", cfg)
    assert m["model"]["hidden_size"] == text["hidden_size"] and m["model"]["num_layers"] == text["num_hidden_layers"]
    assert m["model"]["head_dim"] == text["hidden_size"] // text["num_attention_heads"]
    assert m["model"]["mrope_section"] == text["rope_parameters"]["mrope_section"]
    assert m["model"]["vision"]["fullatt_block_indexes"] == cfg["vision_config"]["fullatt_block_indexes"]
    assert m["target"] == "ort" and m["graphs"]["decoder"]["kv_layout"] == "BNSH"
    assert m["graphs"]["decoder"]["contrib_ops"] == ["GroupQueryAttention", "MRotaryEmbedding",
                                                     "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization"]
    # the rotary tables cover the config's positions (the tiny config's 4096, under the 32768 cap)
    assert m["graphs"]["decoder"]["rotary_positions"] == text["max_position_embeddings"] == m["model"]["max_position"]
    assert m["graphs"]["decoder"]["min_onnxruntime"] == "1.29"  # MRotaryEmbedding's first release
    import onnx

    used = {n.op_type for n in onnx.load(str(tiny_bundle / "decoder.onnx"), load_external_data=False).graph.node}
    assert set(m["graphs"]["decoder"]["contrib_ops"]) <= used
    assert m["embed_tokens"]["shape"] == [text["vocab_size"], text["hidden_size"]]
    for key in ("torch", "transformers", "onnx", "created", "source", "version"):
        assert m["exporter"][key], key


def test_special_tokens_come_from_the_tokenizer(tiny_bundle):
    from tokenizers import Tokenizer

    m = json.loads((tiny_bundle / "manifest.json").read_text())
    tok = Tokenizer.from_file(str(tiny_bundle / "tokenizer.json"))
    assert m["tokens"]["image_pad"] == tok.token_to_id("<|image_pad|>") != 151655  # custom vocab, not Qwen's ids
    assert m["tokens"]["vision_start"] == tok.token_to_id("<|vision_start|>")
    assert m["tokens"]["vision_end"] == tok.token_to_id("<|vision_end|>")
    assert m["tokens"]["eos"][0] == tok.token_to_id("<|im_end|>")
    assert tok.token_to_id("<|endoftext|>") in m["tokens"]["eos"]
    assert m["tokens"]["pad"] == tok.token_to_id("<|endoftext|>")


def test_every_file_is_listed_with_its_sha256(tiny_bundle):
    m = json.loads((tiny_bundle / "manifest.json").read_text())
    on_disk = {p.relative_to(tiny_bundle).as_posix() for p in tiny_bundle.rglob("*") if p.is_file()}
    assert set(m["files"]) == on_disk - {"manifest.json"}
    for rel, entry in m["files"].items():
        data = (tiny_bundle / rel).read_bytes()
        assert entry["bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest(), rel
    assert {"vision.onnx", "decoder.onnx", "embed_tokens.npy", "tokenizer.json", "chat_template.jinja"} <= on_disk
    emb = np.load(tiny_bundle / "embed_tokens.npy", allow_pickle=False)
    assert emb.dtype == np.float32 and list(emb.shape) == m["embed_tokens"]["shape"]


def test_runtime_loader_accepts_the_bundle(tiny_bundle):
    from omniad_edge import load_bundle

    bundle = load_bundle(tiny_bundle)  # schema, sha256 and containment checks of the device side
    assert bundle.decoder_path.name == "decoder.onnx" and bundle.embed_tokens().shape[0] == bundle.model["vocab_size"]


@pytest.mark.parametrize("target", ["ort", "tensorrt"])
def test_graph_io_follows_design(request, target):
    import onnx

    from helpers.reference import ort_session

    tiny_bundle = request.getfixturevalue("tiny_bundle" if target == "ort" else "tiny_bundle_plain")
    m = json.loads((tiny_bundle / "manifest.json").read_text())
    assert m["target"] == target
    layers = m["model"]["num_layers"]
    vision = ort_session(tiny_bundle / "vision.onnx")
    assert [(i.name, i.type, i.shape) for i in vision.get_inputs()] == [
        ("pixel_values", "tensor(float)", ["patches", 1176]), ("rotary_pos_ids", "tensor(int64)", ["patches", 2]),
        ("image_gather", "tensor(int64)", ["images", "image_len"]), ("image_scatter", "tensor(int64)", ["patches"]),
        ("window_gather", "tensor(int64)", ["windows", "window_len"]),
        ("window_scatter", "tensor(int64)", ["patches"])]
    fused = "com.microsoft.MultiHeadAttention" if target == "ort" else "plain"
    assert m["graphs"]["vision"]["attention"] == {"full": fused, "window": "plain"}
    # ONNX Runtime's own ops in the vision graph are listed (the load error names them), and only there
    contrib = {n.domain + "." + n.op_type for n in onnx.load(str(tiny_bundle / "vision.onnx")).graph.node
               if n.domain == "com.microsoft"}
    assert contrib == {f"com.microsoft.{op}" for op in m["graphs"]["vision"].get("contrib_ops", [])}
    assert contrib == ({"com.microsoft.MultiHeadAttention", "com.microsoft.RotaryEmbedding"} if target == "ort"
                       else set())
    assert [(o.name, o.type) for o in vision.get_outputs()] == [("image_embeds", "tensor(float)")]
    decoder = ort_session(tiny_bundle / "decoder.onnx")
    names = ["inputs_embeds", "position_ids", "attention_mask"]
    names += [f"past_{kv}.{i}" for i in range(layers) for kv in ("key", "value")]
    assert [i.name for i in decoder.get_inputs()] == names
    kv_out = "present" if target == "ort" else "new"
    assert [o.name for o in decoder.get_outputs()] == ["logits"] + [
        f"{kv_out}_{kv}.{i}" for i in range(layers) for kv in ("key", "value")] + ["draft_logits"]
    assert decoder.get_outputs()[-1].shape == ["batch", "drafts", m["model"]["vocab_size"]]
    assert m["graphs"]["decoder"]["draft_logits"] == 15
    shapes = {i.name: i.shape for i in decoder.get_inputs()}
    heads, hd = m["model"]["num_key_value_heads"], m["model"]["head_dim"]
    if target == "ort":  # BNSH, past and present the same buffer of any capacity
        assert m["graphs"]["decoder"]["kv_layout"] == "BNSH"
        assert shapes["past_key.0"] == ["batch", heads, "capacity", hd]
        assert decoder.get_outputs()[1].shape == ["batch", heads, "capacity", hd]
    else:  # BSHD, standard ONNX ops only
        assert m["graphs"]["decoder"]["kv_layout"] == "BSHD"
        assert shapes["past_key.0"] == ["batch", "past", heads, hd]
        assert all(n.domain in ("", "ai.onnx") for g in ("decoder", "vision")
                   for n in onnx.load(str(tiny_bundle / f"{g}.onnx")).graph.node)
    assert shapes["position_ids"][0] == 3
    assert all(i.type == "tensor(float)" for i in decoder.get_inputs() if i.name.startswith(("past", "inputs")))


# --- parity with transformers --------------------------------------------------------------------------------

@pytest.mark.parametrize("size", SIZES)
def test_parity_custom_vocab_single_image(tiny_bundle, tiny_checkpoint, size):
    _assert_parity(tiny_bundle, tiny_checkpoint, [[make_frame(*size, seed=size[0])]])


def test_parity_batch_of_two_sizes_left_padding(tiny_bundle, tiny_checkpoint):
    frames = [[make_frame(*SIZES[0], seed=1)], [make_frame(*SIZES[1], seed=2)]]
    out = _assert_parity(tiny_bundle, tiny_checkpoint, frames)
    assert len(out.tokens) == 2


def test_parity_tensorrt_target_batch_with_a_reference_image(tiny_bundle_plain, tiny_checkpoint):
    """The plain BSHD decoder of --target tensorrt: a left-padded batch, one row with a reference image."""
    frames = [[make_frame(*SIZES[2], seed=3), make_frame(*SIZES[0], seed=4)], [make_frame(*SIZES[1], seed=2)]]
    _assert_parity(tiny_bundle_plain, tiny_checkpoint, frames)


def test_parity_two_images_in_one_prompt(tiny_bundle, tiny_checkpoint):
    """Reference image + query image in one prompt: one vision call over both, two mrope blocks."""
    _assert_parity(tiny_bundle, tiny_checkpoint, [[make_frame(*SIZES[2], seed=3), make_frame(*SIZES[0], seed=4)]])


@pytest.mark.parametrize("size", SIZES[:2])
def test_parity_real_qwen_vocab(qwen_bundle, qwen_checkpoint, size):
    _assert_parity(qwen_bundle, qwen_checkpoint, [[make_frame(*size, seed=7)]], max_new=8)


def test_vision_graph_equals_transformers_for_concatenated_images(tiny_bundle, tiny_checkpoint):
    from omniad_edge.preprocess import preprocess_image

    pre = json.loads((tiny_bundle / "manifest.json").read_text())["preprocess"]
    images = [preprocess_image(make_frame(*s, seed=i), pre) for i, s in enumerate(SIZES)]
    assert _vision_vs_transformers(tiny_bundle, tiny_checkpoint, images) < 1e-5


def test_parity_at_1024_image_tokens(tiny_bundle, tiny_checkpoint):
    runner, frame = _large_frame_runner(tiny_bundle, 32)
    prompt = runner.prompt([frame])
    ours = runner.generate([prompt], 6)
    from helpers.hf_reference import hf_generate

    ref_tokens, _, ref_grids = hf_generate(tiny_checkpoint, runner.manifest, [prompt.input_ids], [[frame]], 6)
    assert ref_grids.tolist() == [[1, 64, 64]]
    assert ours.tokens == ref_tokens


def _vision_vs_transformers(bundle, checkpoint, images) -> float:
    import torch

    from helpers.hf_reference import load_hf
    from omniad_edge.preprocess import concat_images

    runner = BundleRunner(bundle)
    ours = runner.image_embeds(images)
    inputs = concat_images(images, 2, runner.vcfg["window_size"], 14)
    with torch.no_grad():
        ref = load_hf(str(checkpoint)).model.visual(torch.from_numpy(inputs["pixel_values"]),
                                                    grid_thw=torch.tensor([im.grid_thw for im in images]))
    ref = ref.pooler_output.numpy()
    assert ours.shape == ref.shape
    return _rel(ours, ref)


def _large_frame_runner(bundle, tokens_side: int):
    """The bundle's runner with its image cap raised in memory, so one frame of tokens_side^2 merged tokens fits."""
    runner = BundleRunner(bundle)
    pre = runner.manifest["preprocess"]
    pre["max_pixels"] = pre["max_image_tokens"] = 28 * 28 * tokens_side ** 2
    return runner, make_frame(28 * tokens_side, 28 * tokens_side, seed=11)


def test_vision_graph_at_1024_image_tokens(tiny_bundle, tiny_checkpoint):
    """4096 patches, 256 windows: the grouped attention still equals transformers at industrial token counts."""
    from omniad_edge.preprocess import preprocess_image

    runner, frame = _large_frame_runner(tiny_bundle, 32)
    image = preprocess_image(frame, runner.manifest["preprocess"])
    assert image.grid_thw == (1, 64, 64)
    assert _vision_vs_transformers(tiny_bundle, tiny_checkpoint, [image]) < 1e-5


def test_vision_graph_holds_no_patches_squared_tensor(tiny_bundle):
    """Every intermediate of the vision graph, run at two sizes, stays far below N x N elements: window scores are
    (windows, heads, L, L), full blocks run the fused op, masks are (groups, L)."""
    import onnx
    import onnxruntime as ort

    from omniad_edge.preprocess import concat_images, preprocess_image

    model = onnx.load(str(tiny_bundle / "vision.onnx"))
    known = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in known:
                model.graph.output.append(onnx.ValueInfoProto(name=name))
                known.add(name)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    runner, _ = _large_frame_runner(tiny_bundle, 24)
    for side in (448, 672):
        image = preprocess_image(make_frame(side, side, seed=side), runner.manifest["preprocess"])
        inputs = concat_images([image], 2, runner.vcfg["window_size"], 14)
        n = inputs["pixel_values"].shape[0]
        outputs = session.run(None, {i.name: inputs[i.name] for i in session.get_inputs()})
        largest = max(np.asarray(o).size for o in outputs)
        assert largest < n * n / 8, (side, n, largest)


@pytest.mark.parametrize("graph", ["vision.onnx", "decoder.onnx"])
def test_onnx_runtime_fuses_every_rmsnorm(tiny_bundle_plain, graph, tmp_path):
    """The exporter writes RMSNorm in the form ONNX Runtime fuses: after its optimizer the vision graph and the
    plain decoder hold one SimplifiedLayerNormalization per norm and no Pow or Sqrt (transformers' x * rsqrt form
    stays six nodes a norm)."""
    import onnx
    import onnxruntime as ort

    path = tiny_bundle_plain / graph
    norms = sum(n.op_type == "ReduceMean" for n in onnx.load(str(path), load_external_data=False).graph.node)
    assert norms > 0
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx"), load_external_data=False).graph.node]
    assert ops.count("SimplifiedLayerNormalization") + ops.count("SkipSimplifiedLayerNormalization") == norms
    assert "Pow" not in ops and "Sqrt" not in ops


# --- Qwen2-VL: full attention in every vision block, LayerNorm, QuickGELU MLP, its own merger -----------------

def _qwen2vl(name: str, tokenizer=None):
    from helpers.tiny_models import write_tiny_checkpoint

    checkpoint = cached_dir(f"tiny-checkpoint-qwen2vl-{name}", source_key("qwen2vl", name, bundle=False),
                            lambda p: write_tiny_checkpoint(p, qwen_tokenizer_json=tokenizer, seed=5,
                                                            architecture="qwen2_vl"))
    bundle = cached_dir(f"tiny-bundle-qwen2vl-{name}-fp32", source_key("qwen2vl", name),
                        lambda p: export_bundle(checkpoint, p, quiet=True))
    return checkpoint, bundle


@pytest.fixture(scope="module")
def qwen2vl():
    return _qwen2vl("custom")


@pytest.fixture(scope="module")
def qwen2vl_qwen_vocab(qwen_tokenizer_path):
    return _qwen2vl("qwenvocab", qwen_tokenizer_path)


def test_qwen2vl_manifest_and_graph(qwen2vl):
    from helpers.reference import ort_session

    checkpoint, bundle = qwen2vl
    m = json.loads((bundle / "manifest.json").read_text())
    cfg = json.loads((checkpoint / "config.json").read_text())["vision_config"]
    assert m["model"]["architecture"] == "qwen2_vl"
    vision = m["model"]["vision"]
    assert vision["hidden_size"] == cfg["embed_dim"] and vision["out_hidden_size"] == cfg["hidden_size"]
    assert vision["window_size"] is None and vision["fullatt_block_indexes"] == list(range(cfg["depth"]))
    assert m["graphs"]["vision"]["attention"] == {"full": "com.microsoft.MultiHeadAttention"}
    names = [i.name for i in ort_session(bundle / "vision.onnx").get_inputs()]
    assert names == ["pixel_values", "rotary_pos_ids", "image_gather", "image_scatter"]


def test_qwen2vl_vision_graph_equals_transformers(qwen2vl):
    from omniad_edge.preprocess import preprocess_image

    checkpoint, bundle = qwen2vl
    pre = json.loads((bundle / "manifest.json").read_text())["preprocess"]
    images = [preprocess_image(make_frame(*s, seed=i), pre) for i, s in enumerate(SIZES)]
    assert _vision_vs_transformers(bundle, checkpoint, images) < 1e-5


@pytest.mark.parametrize("size", SIZES)
def test_qwen2vl_parity_single_image(qwen2vl, size):
    _assert_parity(qwen2vl[1], qwen2vl[0], [[make_frame(*size, seed=size[1])]])


def test_qwen2vl_parity_batch_left_padding_and_reference_image(qwen2vl):
    """Two sequences of different lengths (left padding); the second holds a reference image and the query."""
    frames = [[make_frame(*SIZES[0], seed=21)], [make_frame(*SIZES[2], seed=22), make_frame(*SIZES[1], seed=23)]]
    out = _assert_parity(qwen2vl[1], qwen2vl[0], frames)
    assert len(out.tokens) == 2


@pytest.mark.parametrize("size", SIZES[:2])
def test_qwen2vl_parity_real_qwen_vocab(qwen2vl_qwen_vocab, size):
    _assert_parity(qwen2vl_qwen_vocab[1], qwen2vl_qwen_vocab[0], [[make_frame(*size, seed=8)]], max_new=8)


# --- precisions ----------------------------------------------------------------------------------------------

def _precision_bundle(checkpoint, precision, **options):
    name = "-".join(["tiny-bundle-custom", precision, *map(str, options.values())])
    return cached_dir(name, source_key(precision, repr(sorted(options.items()))),
                      lambda p: export_bundle(checkpoint, p, quiet=True, precision=precision, **options))


@pytest.mark.parametrize("precision, options, ops, max_rel", [
    ("fp16", {}, {"GroupQueryAttention"}, 5e-3),  # measured ~5e-4
    ("fp16", {"target": "tensorrt"}, set(), 5e-3),
    ("int8", {}, {"MatMulInteger", "DynamicQuantizeLinear"}, 0.1),  # measured ~3e-2
    ("int4", {}, {"MatMulNBits", "GroupQueryAttention"}, 0.4),  # measured ~0.18 on random gaussian weights
    ("int4", {"target": "tensorrt"}, {"DequantizeLinear"}, 0.4),
])
def test_precisions_run_with_float32_io(tiny_checkpoint, tiny_bundle, precision, options, ops, max_rel):
    import onnx

    bundle = _precision_bundle(tiny_checkpoint, precision, **options)
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["precision"] == precision and m["graphs"]["decoder"]["precision"] == precision
    graph = onnx.load(str(bundle / "decoder.onnx"))
    op_types = {n.op_type for n in graph.graph.node}
    assert ops <= op_types
    assert m["target"] == options.get("target", "ort")
    if options.get("target") == "tensorrt":  # only standard ONNX ops, for runtimes other than ONNX Runtime
        assert all(n.domain in ("", "ai.onnx") for n in graph.graph.node)
        vision = onnx.load(str(bundle / "vision.onnx"))
        assert all(n.domain in ("", "ai.onnx") for n in vision.graph.node)
        if precision == "int4":
            assert m["graphs"]["decoder"]["int4"]["format"] == "qdq" and m["graphs"]["vision"]["precision"] == "fp32"
            onnx.checker.check_model(graph, full_check=True)  # valid at the opset 21 the quantizer moved it to
    if precision == "fp16":
        assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.graph.initializer)
        # the last two vision blocks keep their MLP in float32 (Qwen2.5-VL-3B's fp16 overflow), the rest is fp16
        vision = onnx.load(str(bundle / "vision.onnx"))
        depth = m["model"]["vision"]["depth"]
        mlp = {i.name: i.data_type for i in vision.graph.initializer if ".mlp." in i.name and i.name[:7] == "blocks."}
        assert mlp and all((t == onnx.TensorProto.FLOAT) == (int(n.split(".")[1]) >= depth - 2) for n, t in mlp.items())
    else:  # every constant weight matrix was quantized, the lm_head included; an int8 vision graph's too
        graphs = [graph] + ([onnx.load(str(bundle / "vision.onnx"))] if m["graphs"]["vision"]["precision"] == "int8"
                            else [])
        for g in graphs:
            weights = {i.name for i in g.graph.initializer if len(i.dims) == 2}
            left = [n.name for n in g.graph.node if n.op_type in ("MatMul", "Gemm") and set(n.input) & weights]
            assert not left, left
        assert len(graphs) == (2 if options.get("target") != "tensorrt" else 1)
        assert all(any(n.op_type == "MatMulInteger" for n in g.graph.node) for g in graphs[1:])
    for value in list(graph.graph.input) + list(graph.graph.output):
        if value.name not in ("position_ids", "attention_mask"):
            assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT, value.name
    frame = make_frame(*SIZES[0], seed=5)
    ref, run = BundleRunner(tiny_bundle), BundleRunner(bundle)
    a = ref.generate([ref.prompt([frame])], 4)
    b = run.generate([run.prompt([frame])], 4)
    assert np.isfinite(b.logits[0]).all()
    assert _rel(b.logits[0], a.logits[0]) < max_rel


def _stored_as(checkpoint: Path, out: Path, dtype: str, via: str | None = None) -> Path:
    """A copy of the checkpoint with its weights stored in `dtype` (rounded through `via` first), as published
    checkpoints store bfloat16."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(checkpoint, out)
    tensors = load_file(str(out / "model.safetensors"))
    for k, t in tensors.items():
        t = t.to(getattr(torch, via)) if via else t
        tensors[k] = t.to(getattr(torch, dtype)).contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    _edit_json(out / "config.json", dtype=dtype, torch_dtype=dtype)
    return out


def test_bfloat16_checkpoint_exports_float_bundles_without_converting_the_model(tiny_checkpoint, tmp_path,
                                                                                  monkeypatch):
    """fp32/fp16 from a bfloat16 checkpoint: weights exported behind Casts, folded one at a time on disk
    (quantize.fold_casts_file); the result equals the in-place conversion of the same (bfloat16-rounded) weights."""
    import onnx

    import export.quantize as quantize

    folded, fold = [], quantize.fold_casts_file
    monkeypatch.setattr(quantize, "fold_casts_file", lambda src, dst, *a: folded.append(Path(dst).name) or
                        fold(src, dst, *a))

    bf16 = _stored_as(tiny_checkpoint, tmp_path / "bf16", "bfloat16")
    rounded = _stored_as(tiny_checkpoint, tmp_path / "rounded", "float32", via="bfloat16")
    frame = make_frame(*SIZES[0], seed=5)
    logits = {}
    for name, ckpt, precision in (("in_place", rounded, "fp32"), ("fp32", bf16, "fp32"), ("fp16", bf16, "fp16")):
        bundle = export_bundle(ckpt, tmp_path / f"bundle-{name}", quiet=True, precision=precision)
        graph = onnx.load(str(bundle / "decoder.onnx")).graph
        inits = {i.name: i.data_type for i in graph.initializer}
        assert onnx.TensorProto.BFLOAT16 not in inits.values()
        assert not [n.name for n in graph.node if n.op_type == "Cast" and n.input[0] in inits]
        runner = BundleRunner(bundle)
        logits[name] = runner.generate([runner.prompt([frame])], 4).logits[0]
    assert folded == ["decoder.onnx", "decoder.onnx"]  # the bfloat16 ones only; a float32 checkpoint converts in place
    assert _rel(logits["fp32"], logits["in_place"]) < 1e-5
    assert _rel(logits["fp16"], logits["in_place"]) < 5e-3  # as for fp16 from a float32 checkpoint


def test_folded_weights_keep_shape_inputs_in_the_graph(tmp_path):
    """fold_casts_file with its weights in external data (a 3B decoder's case) keeps small tensors such as
    Unsqueeze axes in the graph: ONNX Runtime refused the folded Qwen2.5-VL-3B decoder when they were external."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    import export.quantize as quantize

    weight = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float16)
    graph = helper.make_graph(
        [helper.make_node("Cast", ["w16"], ["w"], to=TensorProto.FLOAT),
         helper.make_node("MatMul", ["x", "w"], ["h"]),
         helper.make_node("Unsqueeze", ["h", "axes"], ["y"])],
        "fold", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 64])],
        [numpy_helper.from_array(weight, "w16"), numpy_helper.from_array(np.array([0], np.int64), "axes")])
    src = tmp_path / "src.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))

    files = quantize.fold_casts_file(src, tmp_path / "dst.onnx", threshold=0)
    assert [f.name for f in files] == ["dst.onnx", "dst.onnx.data"]
    inits = {i.name: i for i in onnx.load_model(str(files[0]), load_external_data=False).graph.initializer}
    assert inits["axes"].data_location != TensorProto.EXTERNAL and inits["w"].data_location == TensorProto.EXTERNAL
    x = np.ones((2, 64), np.float32)
    y = ort.InferenceSession(str(files[0]), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(y[0], x @ weight.astype(np.float32), rtol=1e-6)


def _fp32_vocab_weights(graph, vocab: int, hidden: int) -> list[str]:
    import onnx

    return [i.name for i in graph.initializer
            if i.data_type == onnx.TensorProto.FLOAT and sorted(i.dims) == sorted([vocab, hidden])]


@pytest.mark.parametrize("keep", [False, True])
def test_int4_quantizes_the_lm_head_unless_kept(tiny_checkpoint, tiny_bundle, keep):
    import onnx

    from omniad_edge import Inspector

    options = {"int4_keep_lm_head": True} if keep else {}
    bundle = _precision_bundle(tiny_checkpoint, "int4", **options)
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["graphs"]["decoder"]["int4"] == {"format": "matmulnbits", "block_size": 32, "symmetric": True,
                                              "accuracy_level": 4, "lm_head": "fp32" if keep else "int4"}
    graph = onnx.load(str(bundle / "decoder.onnx")).graph
    vocab, hidden = m["model"]["vocab_size"], m["model"]["hidden_size"]
    left = _fp32_vocab_weights(graph, vocab, hidden)
    assert len(left) == (1 if keep else 0), left
    levels = {onnx.helper.get_attribute_value(a) for n in graph.node if n.op_type == "MatMulNBits"
              for a in n.attribute if a.name == "accuracy_level"}
    assert levels == {4}
    # the runtime reads it unchanged: float32 in, float32 logits out
    frame = make_frame(*SIZES[1], seed=3)
    result = Inspector(bundle, mode="detect", threads=1, max_new_tokens=6).run(frame)
    assert result.generated_tokens > 0 and 0.0 <= result.score <= 1.0
    ref, run = BundleRunner(tiny_bundle), BundleRunner(bundle)
    a = ref.generate([ref.prompt([frame])], 1)
    b = run.generate([run.prompt([frame])], 1)
    assert b.logits[0].dtype == np.float32 and np.isfinite(b.logits[0]).all()
    assert _rel(b.logits[0], a.logits[0]) < 0.4


def _toy_decoder(form: str):
    """x -> MatMul(W1) -> output projection in one of the forms exporters write -> logits (vocab 96, hidden 64)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((96, 64)).astype(np.float32), "head")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"])]
    if form == "gemm":
        nodes.append(helper.make_node("Gemm", ["h", "head"], ["logits"], transB=1))
    elif form == "gemm_bias":
        inits.append(numpy_helper.from_array(np.linspace(-1, 1, 96, dtype=np.float32), "bias"))
        nodes.append(helper.make_node("Gemm", ["h", "head", "bias"], ["logits"], transB=1))
    elif form == "matmul_transpose":
        nodes += [helper.make_node("Transpose", ["head"], ["head_t"], perm=[1, 0]),
                  helper.make_node("MatMul", ["h", "head_t"], ["logits"])]
    elif form == "bf16_cast":  # export/graphs.py _CastLinear: bfloat16 weights cast to float32 in the graph
        import ml_dtypes

        inits = [numpy_helper.from_array(numpy_helper.to_array(i).astype(ml_dtypes.bfloat16), i.name) for i in inits]
        inits.append(numpy_helper.from_array(np.linspace(-1, 1, 64).astype(ml_dtypes.bfloat16), "scale"))
        nodes = [helper.make_node("Cast", ["w1"], ["w1_f"], to=TensorProto.FLOAT),
                 helper.make_node("MatMul", ["x", "w1_f"], ["h0"]),
                 helper.make_node("Cast", ["scale"], ["scale_f"], to=TensorProto.FLOAT),
                 helper.make_node("Mul", ["h0", "scale_f"], ["h"]),
                 helper.make_node("Cast", ["head"], ["head_f"], to=TensorProto.FLOAT),
                 helper.make_node("Transpose", ["head_f"], ["head_t"], perm=[1, 0]),
                 helper.make_node("MatMul", ["h", "head_t"], ["logits"])]
    else:  # the weight already [K, N], behind a Gather of the last position like our decoder's
        inits[1] = numpy_helper.from_array(numpy_helper.to_array(inits[1]).T.copy(), "head")
        inits.append(numpy_helper.from_array(np.array(0, np.int64), "last"))
        nodes += [helper.make_node("MatMul", ["h", "head"], ["all"]),
                  helper.make_node("Gather", ["all", "last"], ["logits"], axis=0)]
    shape = [96] if form == "matmul" else [2, 96]
    graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("form", ["gemm", "gemm_bias", "matmul_transpose", "matmul", "bf16_cast"])
@pytest.mark.parametrize("keep", [False, True])
def test_int4_output_projection_forms(form, keep):
    import onnx
    import onnxruntime as ort

    from export.quantize import quantize_int4

    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    ref = ort.InferenceSession(_toy_decoder(form).SerializeToString()).run(None, {"x": x})[0]
    quantized = quantize_int4(_toy_decoder(form), keep_lm_head=keep)
    assert sum(n.op_type == "MatMulNBits" for n in quantized.graph.node) == (1 if keep else 2)
    assert len(_fp32_vocab_weights(quantized.graph, 96, 64)) == (1 if keep else 0)
    # a bfloat16 checkpoint's casts are folded: no Cast of a constant and no bfloat16 weight is left
    assert not any(n.op_type == "Cast" for n in quantized.graph.node)
    assert not any(i.data_type == onnx.TensorProto.BFLOAT16 for i in quantized.graph.initializer)
    out = ort.InferenceSession(quantized.SerializeToString()).run(None, {"x": x})[0]
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert _rel(out, ref) < 0.2  # int4 blocks of 32 on gaussian weights, int8 activations: measured ~0.08


def test_int4_without_output_projection_is_an_error():
    from onnx import TensorProto, helper

    from export.quantize import quantize_int4

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    with pytest.raises(ExportError, match="output projection"):
        quantize_int4(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


# --- bad input -----------------------------------------------------------------------------------------------

@pytest.fixture
def ckpt_copy(tiny_checkpoint, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, dst)
    return dst


def _edit_json(path: Path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _export_fails(ckpt, tmp_path, match, **options):
    out = tmp_path / "bundle"
    with pytest.raises(ExportError, match=match):
        export_bundle(ckpt, out, quiet=True, **options)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle")], "partial bundle left behind"


def test_rejects_missing_dir(tmp_path):
    _export_fails(tmp_path / "nope", tmp_path, "not a directory")


def test_rejects_other_model_type(ckpt_copy, tmp_path):
    _edit_json(ckpt_copy / "config.json", model_type="qwen3_vl")
    _export_fails(ckpt_copy, tmp_path, "model_type is 'qwen3_vl'; only 'qwen2_5_vl', 'qwen2_vl'")


def test_rejects_missing_config(ckpt_copy, tmp_path):
    (ckpt_copy / "config.json").unlink()
    _export_fails(ckpt_copy, tmp_path, "config.*missing")


def test_rejects_corrupt_config(ckpt_copy, tmp_path):
    (ckpt_copy / "config.json").write_text("{not json")
    _export_fails(ckpt_copy, tmp_path, "not valid JSON")


def test_rejects_truncated_weights(ckpt_copy, tmp_path):
    weights = ckpt_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    _export_fails(ckpt_copy, tmp_path, "truncated")


def test_rejects_missing_weights(ckpt_copy, tmp_path):
    (ckpt_copy / "model.safetensors").unlink()
    _export_fails(ckpt_copy, tmp_path, "no \\*.safetensors")


def test_rejects_missing_tokenizer(ckpt_copy, tmp_path):
    (ckpt_copy / "tokenizer.json").unlink()
    _export_fails(ckpt_copy, tmp_path, "tokenizer.*missing")


def test_rejects_tokenizer_without_vision_tokens(ckpt_copy, tmp_path):
    tok = json.loads((ckpt_copy / "tokenizer.json").read_text())
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["content"] != "<|image_pad|>"]
    (ckpt_copy / "tokenizer.json").write_text(json.dumps(tok))
    _export_fails(ckpt_copy, tmp_path, "image_pad")


def test_rejects_config_token_ids_that_disagree_with_tokenizer(ckpt_copy, tmp_path):
    _edit_json(ckpt_copy / "config.json", image_token_id=3)
    _export_fails(ckpt_copy, tmp_path, "image_token_id=3")


def test_rejects_sliding_window(ckpt_copy, tmp_path):
    cfg = json.loads((ckpt_copy / "config.json").read_text())
    cfg["text_config"]["use_sliding_window"] = True
    (ckpt_copy / "config.json").write_text(json.dumps(cfg))
    _export_fails(ckpt_copy, tmp_path, "use_sliding_window")


def test_rejects_processor_that_disagrees_with_vision_tower(ckpt_copy, tmp_path):
    _edit_json(ckpt_copy / "preprocessor_config.json", patch_size=16)
    _export_fails(ckpt_copy, tmp_path, "patch_size=16")


@pytest.mark.parametrize("options, match", [
    ({"precision": "int3"}, "precision"), ({"max_image_tokens": 2}, "max_image_tokens"),
    ({"vision_precision": "int4"}, "vision_precision"), ({"no_such_option": 1}, "unknown export option"),
    ({"int4_block_size": 24}, "int4_block_size"), ({"int4_accuracy_level": 7}, "int4_accuracy_level"),
    ({"int4_keep_lm_head": "yes"}, "int4_keep_lm_head"),
    ({"fp32_vision_mlp_blocks": -1}, "fp32_vision_mlp_blocks"), ({"embed_dtype": "int8"}, "embed_dtype"),
    ({"vision_attention": "flash"}, "vision_attention"), ({"target": "onnx"}, "target must be one of"),
    ({"target": "tensorrt", "precision": "int8"}, "int8 bundles use ONNX Runtime"),
    ({"target": "tensorrt", "precision": "int4", "int4_format": "matmulnbits"}, "use 'qdq'"),
    ({"target": "tensorrt", "vision_precision": "int8"}, "int8 vision graph"),
    ({"target": "ort", "prefer_dynamo": False}, "needs the dynamo exporter"),
])
def test_rejects_bad_options(tiny_checkpoint, tmp_path, options, match):
    _export_fails(tiny_checkpoint, tmp_path, match, **options)


@pytest.mark.parametrize("spec, match", [
    ({"colour": 1}, "unknown keys"),
    ({"prompt": {"template": "{system} only"}}, "prompt.template"),
    ({"prompt": {"image": "{image_pads} {oops}"}}, "prompt.image"),
    ({"output": {"mask": {"labels": ["others"]}}}, "labels"),
    ({"output": {"mask": {"background": 5}}}, "background"),
    ({"output": {"order": ["mask", "verdict"]}}, "order"),
    ({"output": {"answers": {"anomalous": "yes", "normal": "yes"}}}, "answers"),
    ({"output": {"tags": {"mask": ["<seg>"]}}}, "tags.mask"),
])
def test_rejects_bad_output_spec(tiny_checkpoint, tmp_path, spec, match):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    _export_fails(tiny_checkpoint, tmp_path, match, output_spec=path)


def test_existing_output_needs_overwrite(tiny_checkpoint, tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists"):
        export_bundle(tiny_checkpoint, out, quiet=True)
    assert (out / "keep.txt").read_text() == "mine"


def test_interrupted_export_leaves_nothing(tiny_checkpoint, tmp_path, monkeypatch):
    from export import pipeline

    def interrupted(*args, **kwargs):  # a half-written graph in the partial directory, then Ctrl-C
        (partial,) = tmp_path.glob(".bundle.partial-*")
        (partial / "vision.onnx").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_export_vision", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_bundle(tiny_checkpoint, tmp_path / "bundle", quiet=True)
    assert list(tmp_path.iterdir()) == []


# --- options that change the bundle --------------------------------------------------------------------------

def test_output_spec_external_data_and_cli(tiny_checkpoint, tiny_bundle, tmp_path, monkeypatch, capsys):
    """One export through the CLI: output-spec overrides land in the manifest, with the external-data threshold
    forced to 0 the weights go to .onnx.data files that are hashed and still load, float16 embeddings work."""
    from export import onnx_export

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 0)
    spec = {"name": "rle-style", "output": {"mask": {"codec": "rle", "labels": ["others", "scratch", "dent"]},
                                            "order": ["mask", "answer"]},
            "prompt": {"detect": "Find defects."}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "bundle"
    code = cli_main([str(tiny_checkpoint), str(out), "--output-spec", str(tmp_path / "spec.json"),
                     "--max-image-tokens", "64", "--embed-dtype", "float16", "--quiet"])
    assert code == 0 and capsys.readouterr().out.strip() == str(out.absolute())
    m = json.loads((out / "manifest.json").read_text())
    assert m["name"] == "rle-style" and m["output"]["mask"]["codec"] == "rle"
    assert m["output"]["mask"]["labels"] == ["others", "scratch", "dent"] and m["output"]["order"] == ["mask", "answer"]
    assert m["output"]["tags"]["mask"] == ["<seg>", "</seg>"]  # untouched defaults stay
    assert m["prompt"]["detect"] == "Find defects." and "{system}" in m["prompt"]["template"]
    assert m["preprocess"]["max_image_tokens"] == 64 and m["preprocess"]["max_pixels"] == 64 * 28 * 28
    assert {"vision.onnx.data", "decoder.onnx.data"} <= set(m["files"])
    assert m["embed_tokens"]["dtype"] == "float16" and np.load(out / "embed_tokens.npy").dtype == np.float16
    # same model and prompt, float16 embedding rows: logits stay close to the float32 bundle's
    half, full = BundleRunner(out), BundleRunner(tiny_bundle)
    prompt = full.prompt([make_frame(90, 150)])
    a = half.generate([prompt], 1).logits[0]
    b = full.generate([prompt], 1).logits[0]
    assert _rel(a, b) < 2e-3  # measured ~2e-4


def test_cli_reports_errors_with_exit_code(tmp_path, capsys):
    assert cli_main([str(tmp_path / "missing"), str(tmp_path / "out"), "--quiet"]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_cli_help_does_not_need_torch():
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None\n"
            "from export.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as e:\n    sys.exit(e.code)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], env={**os.environ, "PYTHONWARNINGS": "error"})
    assert run.returncode == 0, run.stderr
    assert "--precision" in run.stdout


def test_the_callers_options_object_is_left_as_given(tiny_checkpoint, tmp_path):
    opts = ExportOptions(precision="int4", max_image_tokens=2)  # refused in the checks, after int4_format is set
    with pytest.raises(ExportError, match="max_image_tokens"):
        export_bundle(tiny_checkpoint, tmp_path / "b", opts, quiet=True, target="tensorrt")
    assert opts == ExportOptions(precision="int4", max_image_tokens=2)


def test_export_options_defaults():
    opts = ExportOptions()
    assert opts.precision == "fp32" and opts.max_image_tokens == 1280 and opts.prefer_dynamo
    assert opts.int4_accuracy_level == 4 and not opts.int4_keep_lm_head  # onnxruntime-genai's CPU int4 settings


def test_flat_legacy_config_reads_like_nested(tiny_checkpoint, ckpt_copy):
    """Published Qwen2.5-VL configs (transformers 4.49 era) are flat with rope_scaling {"type": "mrope"}."""
    from export.checkpoint import inspect_checkpoint, load_model
    from export.manifest import model_section

    cfg = json.loads((ckpt_copy / "config.json").read_text())
    text = cfg.pop("text_config")
    rope = text.pop("rope_parameters")
    flat = {**{k: v for k, v in text.items() if k not in ("model_type", "dtype")}, **cfg,
            "rope_scaling": {"type": "mrope", "mrope_section": rope["mrope_section"]},
            "rope_theta": rope["rope_theta"]}
    (ckpt_copy / "config.json").write_text(json.dumps(flat))
    nested = model_section(inspect_checkpoint(tiny_checkpoint))
    legacy = inspect_checkpoint(ckpt_copy)
    assert model_section(legacy) == nested
    model = load_model(legacy)
    assert model.config.text_config.hidden_size == nested["hidden_size"]
    assert list(model.model.language_model.rotary_emb.mrope_section) == nested["mrope_section"]


def test_dynamo_failure_falls_back_to_legacy_and_says_why(tiny_checkpoint, tiny_bundle, tmp_path, monkeypatch):
    import torch

    real_export = torch.onnx.export

    def dynamo_breaks(*args, **kwargs):
        if kwargs.get("dynamo"):
            raise RuntimeError("simulated dynamo failure")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_breaks)
    # the fused decoder exists only through dynamo: no silent fallback to another graph form
    with pytest.raises(ExportError, match="target ort: the dynamo exporter failed.*--target tensorrt"):
        export_bundle(tiny_checkpoint, tmp_path / "ort", quiet=True)
    assert not (tmp_path / "ort").exists()
    out = export_bundle(tiny_checkpoint, tmp_path / "bundle", quiet=True, target="tensorrt")
    info = json.loads((out / "manifest.json").read_text())["exporter"]["graphs"]
    for graph in ("vision", "decoder"):
        assert info[graph]["exporter"] == "legacy"
        assert "simulated dynamo failure" in info[graph]["fallback_reason"]
    # TorchScript cannot write the fused op: standard ops only, and the manifest says so
    import onnx

    assert info["vision"]["attention"] == {"full": "plain", "window": "plain"}
    assert "MultiHeadAttention" not in {n.op_type for n in onnx.load(str(out / "vision.onnx")).graph.node}
    frame = make_frame(*SIZES[1], seed=9)
    legacy, dynamo = BundleRunner(out), BundleRunner(tiny_bundle)
    a = legacy.generate([legacy.prompt([frame])], 6)
    b = dynamo.generate([dynamo.prompt([frame])], 6)
    assert a.tokens == b.tokens
    assert max(_rel(x, y) for x, y in zip(a.logits, b.logits)) < LOGIT_RTOL


@pytest.mark.parametrize("target", ["ort", "tensorrt"])
@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_draft_logits_are_the_logits_one_token_at_a_time_gives(request, target, native):
    """A run of S tokens returns, in draft_logits, the logits after each of its first S - 1 tokens: the ones S
    one-token runs give (speculative decoding checks drafts with them). Longer runs (a prefill) return the
    last DRAFT_POSITIONS; the runtime refuses a draft buffer for a run it cannot fill."""
    from omniad_edge.backends import create_backend
    from omniad_edge.bundle import load_bundle
    from omniad_edge.errors import BackendError

    bundle = load_bundle(request.getfixturevalue("tiny_bundle" if target == "ort" else "tiny_bundle_plain"))
    backend = create_backend(bundle, "onnxruntime", threads=1, native=native)
    assert backend.draft_positions == 15
    rng = np.random.default_rng(0)
    hidden, vocab = int(bundle.model["hidden_size"]), int(bundle.model["vocab_size"])
    past, s = 7, 6
    embeds = rng.standard_normal((1, past + s, hidden)).astype(np.float32)
    positions = np.broadcast_to(np.arange(past + s), (3, 1, past + s)).astype(np.int64).copy()
    mask = np.ones((1, past + s), np.int64)

    stepwise = backend.new_cache(1, 32)
    backend.forward(embeds[:, :past], positions[:, :, :past], mask[:, :past], stepwise, 0)
    expected = [backend.forward(embeds[:, t:t + 1], positions[:, :, t:t + 1], mask[:, :t + 1], stepwise, t).copy()
                for t in range(past, past + s)]
    cache = backend.new_cache(1, 32)
    backend.forward(embeds[:, :past], positions[:, :, :past], mask[:, :past], cache, 0)
    draft = np.full((1, s - 1, vocab), np.nan, np.float32)
    last = backend.forward(embeds[:, past:], positions[:, :, past:], mask, cache, past, draft)
    np.testing.assert_allclose(draft[0], np.concatenate(expected[:-1]), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(last, expected[-1], atol=1e-4, rtol=1e-4)
    # the next one-token run after a draft run (the output unbound again) is the plain step
    nxt = backend.forward(embeds[:, :1], positions[:, :, :1] + past + s, np.ones((1, past + s + 1), np.int64), cache,
                          past + s)
    assert np.isfinite(nxt).all()

    with pytest.raises(BackendError, match="2..16 tokens"):
        backend.forward(embeds[:, :1], positions[:, :, :1], mask[:, :1], backend.new_cache(1, 8), 0,
                        np.empty((1, 0, vocab), np.float32))
    with pytest.raises(BackendError, match=r"shape \(1, 5, "):
        backend.forward(embeds[:, past:], positions[:, :, past:], mask, cache, past,
                        np.empty((1, 4, vocab), np.float32))
