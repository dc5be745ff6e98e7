"""training/bundle_weights.py: a bundle read back into a PyTorch / Hugging Face model holds the weights it was exported
from, in every form the exporter writes, and exporting that folder again writes the same bundle."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from omniad_edge.errors import BundleError  # noqa: E402

BUNDLE = Path(__file__).resolve().parents[1] / "omniad_edge" / "models" / "default"


def test_the_shipped_bundle_becomes_a_torch_model_with_the_same_output(tmp_path):
    from training import spec as S
    from training.bundle_weights import model_from_bundle
    from training.evaluate import EdgeRunner, TorchRunner, evaluate
    from training.train import save_hf

    model, tokenizer = model_from_bundle(BUNDLE)
    assert sum(p.numel() for p in model.parameters()) == 4_882_048
    save_hf(model, tmp_path / "hf", BUNDLE / "tokenizer.json", S.load_spec())
    result = evaluate([EdgeRunner(BUNDLE, threads=2), TorchRunner(tmp_path / "hf", threads=2)], n=4, progress=False)
    agreement = result["summary"]["agreement"]
    # fp16 weights back in float32: the same greedy text, scores within the fp16 bundle's own tolerance
    assert agreement["text_differs"] == 0 and agreement["max_score_diff"] < 5e-3, agreement


def _perturbed_checkpoint(src: Path, out: Path, dtype) -> Path:
    """The tiny checkpoint with every weight moved by noise (its norms are all 1 and biases 0, which the exporter would
    store once for all), stored in `dtype`: float32 makes the exporter fold casts, float16 convert in place."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, out)
    gen = torch.Generator().manual_seed(1)
    for f in out.glob("*.safetensors"):
        tensors = {k: (v.float() + 0.05 * torch.randn(v.shape, generator=gen)).to(dtype).contiguous()
                   for k, v in load_file(f).items()}
        save_file(tensors, f, metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    config["dtype"] = config["torch_dtype"] = str(dtype).removeprefix("torch.")
    (out / "config.json").write_text(json.dumps(config))
    return out


def _checkpoint_weights(path: Path) -> dict:
    """The checkpoint's parameters under transformers' own names (as loaded), in float32."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype="auto")
    return {k: v.float() for k, v in model.state_dict().items()}


# (checkpoint dtype, bundle precision, target): the exporter's forms. fp32 checkpoint -> fp16 bundle folds casts
# (how the embedded bundle was re-exported); fp16 -> fp16 and fp32 -> fp32 convert in place (named weights); the
# plain fp32 decoder is the form of bundles from before targets.
FORMS = [("fp32", "fp16", "ort"), ("fp32", "fp16", "tensorrt"), ("fp16", "fp16", "ort"), ("fp32", "fp32", "tensorrt")]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_checkpoint):
    """form -> (checkpoint, bundle), exported on first use."""
    import torch

    from export import export_bundle

    root = tmp_path_factory.mktemp("forms")
    checkpoints, bundles = {}, {}

    def get(form):
        dtype = form[0]
        if dtype not in checkpoints:
            checkpoints[dtype] = _perturbed_checkpoint(tiny_checkpoint, root / f"ckpt-{dtype}",
                                                       torch.float16 if dtype == "fp16" else torch.float32)
        if form not in bundles:
            bundles[form] = export_bundle(checkpoints[dtype], root / "-".join(form), precision=form[1],
                                          target=form[2], quiet=True)
        return checkpoints[dtype], bundles[form]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS, ids=lambda f: "-".join(f))
def test_every_exporter_form_reads_back_to_the_checkpoint_weights(exported, form):
    """Plain and fused decoders, weights converted in place or folded from casts: each parameter read back is the
    checkpoint's, exactly, or (fp16 bundles) its float16 rounding."""
    import torch

    from training.bundle_weights import model_from_bundle

    checkpoint, bundle = exported(form)
    model, _ = model_from_bundle(bundle, reference_only=False)
    source = _checkpoint_weights(checkpoint)
    state = model.state_dict()
    assert set(state) == set(source)
    for name, value in state.items():
        want = source[name]
        if form[1] == "fp32":
            assert torch.equal(value, want), name
        else:
            assert torch.equal(value, want) or torch.equal(value, want.half().float()), name
    text = model.config.text_config
    assert (text.intermediate_size, text.rms_norm_eps) == (128, 1e-6)


def _initializers(path: Path) -> dict:
    import onnx
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


@pytest.mark.slow
@pytest.mark.parametrize("target", ["ort", "tensorrt"])
def test_bundle_to_folder_to_export_writes_the_same_bundle(exported, tmp_path, target, capsys):
    """The embedded bundle's route (python -m training.bundle_weights, then python -m export with the printed
    options): the fp16 bundle's graphs come back with the same initializers, the same manifest apart from its
    provenance, and the same greedy text."""
    from export.cli import main as export_main
    from omniad_edge import Inspector
    from omniad_edge.synth import make_sample
    from training.bundle_weights import main

    _, original = exported(("fp32", "fp16", target))
    assert main([str(original), str(tmp_path / "hf")]) == 0
    assert "--max-image-tokens" in capsys.readouterr().out
    again = tmp_path / "again"
    m0 = json.loads((original / "manifest.json").read_text())
    assert export_main([str(tmp_path / "hf"), str(again), "--precision", "fp16", "--target", target, "--quiet",
                        "--max-image-tokens", str(m0["preprocess"]["max_image_tokens"]),
                        "--output-spec", str(tmp_path / "hf" / "output_spec.json")]) == 0
    for graph in ("vision.onnx", "decoder.onnx"):
        a, b = _initializers(original / graph), _initializers(again / graph)
        assert a.keys() == b.keys(), graph
        for name in a:
            assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), (graph, name)
    assert np.array_equal(np.load(original / "embed_tokens.npy"), np.load(again / "embed_tokens.npy"))
    m1 = json.loads((again / "manifest.json").read_text())
    for m in (m0, m1):
        m["exporter"].pop("created"), m["exporter"].pop("source")
        for f in ("vision.onnx", "decoder.onnx"):  # same weights; the graph files differ in node names only
            m["files"].pop(f)
    assert m0 == m1
    frame = make_sample(seed=3, size=96, anomalous=True).image
    texts = [Inspector(str(b), mode="explain", threads=1).run(frame).text for b in (original, again)]
    assert texts[0] == texts[1]


def test_a_quantized_bundle_is_refused(tmp_path):
    from training.bundle_weights import model_from_bundle

    copy = tmp_path / "int8"
    shutil.copytree(BUNDLE, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["precision"] = "int8"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="cannot be fine-tuned"):
        model_from_bundle(copy)


def test_another_shape_is_refused_for_adapt(tiny_bundle):
    from training.bundle_weights import model_from_bundle

    with pytest.raises(BundleError, match="reference architecture"):
        model_from_bundle(tiny_bundle)


def test_a_bundle_not_from_this_exporter_is_refused(tmp_path, exported):
    """A decoder whose weights carry no module scope cannot be mapped: a clear error, not a half-filled model."""
    import onnx

    from export.manifest import sha256_file
    from training.bundle_weights import model_from_bundle

    copy = tmp_path / "stripped"
    shutil.copytree(exported(("fp32", "fp16", "ort"))[1], copy)
    model = onnx.load(str(copy / "decoder.onnx"))
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.save(model, str(copy / "decoder.onnx"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["decoder.onnx"] = {"sha256": sha256_file(copy / "decoder.onnx"),
                                         "bytes": (copy / "decoder.onnx").stat().st_size}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="no weights found"):
        model_from_bundle(copy, reference_only=False)
