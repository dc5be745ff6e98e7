"""A bundle back into a trainable PyTorch model: the weights of vision.onnx, decoder.onnx and embed_tokens.npy put
into the reference architecture (training/model.py), so `omniad-edge adapt --from BUNDLE` can fine-tune a shipped
model whose training checkpoint is not at hand (the embedded one ships as a bundle only).

The exporter (export/graphs.py) names most weights by their module path; the ones it folds into a cast or a
transposed constant get generated names, and are recognised here by what consumes them: the torch name scope the
dynamo exporter records on every node (`pkg.torch.onnx.name_scopes`) for linear weights, and the order of the
normalisations in the graph for norm weights. Only fp32 and fp16 bundles carry plain weights; a quantized bundle is
refused. The result is checked by running it against the bundle (tests/test_training_bundle_weights.py).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np

from omniad_edge.errors import BundleError

__all__ = ["model_from_bundle", "bundle_spec"]


def bundle_spec(bundle_dir: str | Path) -> dict:
    """The bundle's prompt and output grammar, in the form training/spec.py reads (name, prompt, output)."""
    from omniad_edge.bundle import load_bundle

    m = load_bundle(bundle_dir).manifest
    return {"name": m["name"], "prompt": m["prompt"], "output": m["output"]}


def _scopes(node) -> list[str]:
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                return list(ast.literal_eval(p.value))
            except (ValueError, SyntaxError):
                return []
    return []


def _graph_weights(path: Path, prefix: str, norm_names: list[str]) -> dict[str, np.ndarray]:
    """torch parameter name -> array for one exported graph. `norm_names` are the norm weights of the graph in the
    order its forward applies them (for the weights the exporter stored as anonymous casts)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    out: dict[str, np.ndarray] = {}
    norms: list[str] = []
    for node in model.graph.node:
        for position, name in enumerate(node.input):
            if name not in inits or name in out or name in norms:
                continue
            init = inits[name]
            if re.fullmatch(r"(blocks|merger|layers)\.[\w.]+\.(weight|bias)", name):
                out[prefix + name] = numpy_helper.to_array(init)
                continue
            scope = [s for s in _scopes(node) if re.fullmatch(r"(blocks|merger|layers|lm_head)[\w.]*", s)]
            if node.op_type == "MatMul" and position == 1 and len(init.dims) == 2 and scope:
                # linear weights are stored (in, out) for MatMul: back to torch's (out, in)
                key = ("" if scope[-1].startswith("lm_head") else prefix) + scope[-1] + ".weight"
                out[key] = numpy_helper.to_array(init).T
            elif node.op_type == "Mul" and len(init.dims) == 1 and name.startswith("_to_copy"):
                norms.append(name)
            elif name == "norm_weight":
                out["model.language_model.norm.weight"] = numpy_helper.to_array(init)
            elif name in ("t", "patch_weight") and node.op_type == "MatMul":
                out["model.visual.patch_embed.proj.weight"] = numpy_helper.to_array(init).T
    missing_norms = [n for n in norm_names if prefix + n not in out]
    if len(norms) != len(missing_norms):
        raise BundleError(f"{path}: found {len(norms)} unnamed norm weights, expected {len(missing_norms)}; this "
                          "bundle was not written by this project's exporter (fine-tune from a checkpoint instead)")
    for torch_name, name in zip(missing_norms, norms):
        out[prefix + torch_name] = numpy_helper.to_array(inits[name])
    return out


def model_from_bundle(bundle_dir: str | Path):
    """(Qwen2_5_VLForConditionalGeneration in float32, tokenizers.Tokenizer) from an fp32 or fp16 bundle of the
    reference architecture. Raises BundleError when the bundle is quantized or of another shape."""
    import torch
    from tokenizers import Tokenizer

    from omniad_edge.bundle import load_bundle

    from .model import TEXT, VISION, make_config

    bundle = load_bundle(bundle_dir)
    m = bundle.manifest
    root = Path(bundle_dir)
    if m["precision"] not in ("fp32", "fp16"):
        raise BundleError(f"bundle {root}: precision {m['precision']!r} cannot be fine-tuned (quantized weights); "
                          "start from an fp32 or fp16 bundle or a checkpoint")
    v = m["model"]["vision"]
    shape = (m["model"]["hidden_size"], m["model"]["num_layers"], v["hidden_size"], v["depth"])
    want = (TEXT["hidden_size"], TEXT["num_hidden_layers"], VISION["hidden_size"], VISION["depth"])
    if m["model"]["architecture"] != "qwen2_5_vl" or shape != want:
        raise BundleError(f"bundle {root}: {m['model']['architecture']} with (hidden, layers, vision hidden, depth) "
                          f"{shape}; adapt fine-tunes the reference architecture {want} only")
    tokenizer = Tokenizer.from_file(str(root / m["tokenizer"]["path"]))
    config = make_config(tokenizer)
    config._attn_implementation = "sdpa"
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration(config)
    vision_norms = [f"blocks.{i}.{n}.weight" for i in range(v["depth"]) for n in ("norm1", "norm2")]
    vision_norms.append("merger.ln_q.weight")
    text_norms = [f"layers.{i}.{n}.weight" for i in range(shape[1])
                  for n in ("input_layernorm", "post_attention_layernorm")]
    weights = _graph_weights(root / m["graphs"]["vision"]["path"], "model.visual.", vision_norms)
    weights.update(_graph_weights(root / m["graphs"]["decoder"]["path"], "model.language_model.", text_norms))
    embed = np.load(root / m["embed_tokens"]["path"], allow_pickle=False)
    weights["model.language_model.embed_tokens.weight"] = embed
    state = model.state_dict()
    missing = sorted(set(state) - set(weights))
    if missing:
        raise BundleError(f"bundle {root}: no weights found for {', '.join(missing[:6])}"
                          f"{' ...' if len(missing) > 6 else ''}")
    for name, array in weights.items():
        if name not in state:
            raise BundleError(f"bundle {root}: weight {name!r} has no place in the reference architecture")
        target = state[name]
        array = np.asarray(array, np.float32)
        if array.size != target.numel():
            raise BundleError(f"bundle {root}: weight {name!r} has {array.shape}, the model wants "
                              f"{tuple(target.shape)}")
        state[name] = torch.from_numpy(array.reshape(tuple(target.shape)).copy())
    model.load_state_dict(state)
    return model.float(), tokenizer

