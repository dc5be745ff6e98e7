"""A bundle back into a PyTorch / Hugging Face Qwen2.5-VL model: the weights of vision.onnx, decoder.onnx and
embed_tokens.npy put into transformers' architecture, so a shipped model whose training checkpoint is not at hand
(the embedded one ships as a bundle only) can be fine-tuned (`omniad-edge adapt --from BUNDLE`) or re-exported:

    python -m training.bundle_weights BUNDLE OUT_DIR      # OUT_DIR: a checkpoint folder `python -m export` reads

The exporter (export/graphs.py) names some weights by their module path and folds others into a Cast or a Transpose
under a generated name; either way a weight is recognised by what consumes it: following its Cast/Transpose chain to
the MatMul or Gemm (which fixes the layout) and reading the torch name scope the dynamo exporter records on that node
(`pkg.torch.onnx.name_scopes`). Both decoder forms are read: the plain one (--target tensorrt and bundles from before
targets) and the fused one (--target ort), whose packed `qkv.N` / `gate_up.N` projections are split back into
q/k/v and gate/up. Norm weights stored under generated names are matched to the norms in the order the forward
applies them. Only fp32 and fp16 bundles carry plain weights; a quantized bundle is refused. Checked by running the
result against the bundle and by re-exporting it (tests/test_training_bundle_weights.py).
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path

import numpy as np

from omniad_edge.errors import BundleError

__all__ = ["model_from_bundle", "bundle_spec", "bundle_config", "save_bundle_as_hf", "main"]

# module paths of the exported graphs' weights: VisionGraph / DecoderGraph / FusedDecoderGraph attributes
_NAMED = re.compile(r"(blocks|merger|layers|qkv|gate_up)\.[\w.]+\.(weight|bias)")
_SCOPE = re.compile(r"(blocks|layers)\.\d+\.[\w.]+|(qkv|gate_up)\.\d+|lm_head|merger\.[\w.]+")
_PASS_THROUGH = ("Cast", "Transpose")
# the fused decoder's norm ops and the input their weight is
_NORM_OPS = {"SimplifiedLayerNormalization": 1, "SkipSimplifiedLayerNormalization": 2}


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


class _Graph:
    """An exported graph's initializers and who consumes them."""

    def __init__(self, path: Path):
        import onnx

        self.path = path
        self.model = onnx.load(str(path))
        self.inits = {t.name: t for t in self.model.graph.initializer}
        self.consumers: dict[str, list] = {}
        for node in self.model.graph.node:
            for position, name in enumerate(node.input):
                self.consumers.setdefault(name, []).append((node, position))

    def array(self, name: str) -> np.ndarray:
        from onnx import numpy_helper

        return numpy_helper.to_array(self.inits[name])

    def user(self, name: str):
        """(node, input position, transposes on the way) of the first consumer that is not a Cast or Transpose."""
        transposes = 0
        while True:
            users = self.consumers.get(name, [])
            if not users:
                return None, None, transposes
            node, position = users[0]
            if node.op_type not in _PASS_THROUGH or len(users) > 1:
                return node, position, transposes
            transposes += node.op_type == "Transpose"
            name = node.output[0]

    def norm_epsilon(self) -> float | None:
        """The decoder's RMSNorm epsilon: an attribute of the fused form's normalisation ops, else the plain form's
        scalar added to ReduceMean(x^2) before Sqrt."""
        from onnx import numpy_helper

        nodes = self.model.graph.node
        for node in nodes:
            if node.op_type in ("SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization"):
                for a in node.attribute:
                    if a.name == "epsilon" and a.f:
                        return float(a.f)
        produced = {o: n for n in nodes for o in n.output}
        constants = {n.output[0]: n for n in nodes if n.op_type == "Constant"}
        for node in nodes:
            if node.op_type != "Add" or not any(produced.get(i) is not None and produced[i].op_type == "ReduceMean"
                                                for i in node.input):
                continue
            for name in node.input:
                if name in self.inits and self.inits[name].dims in ([], [1]):
                    return float(self.array(name).reshape(-1)[0])
                if name in constants:
                    value = next((a.t for a in constants[name].attribute if a.name == "value"), None)
                    if value is not None and numpy_helper.to_array(value).size == 1:
                        return float(numpy_helper.to_array(value).reshape(-1)[0])
        return None


def _linear_key(prefix: str, scope: str, kind: str) -> str:
    return ("" if scope.startswith("lm_head") else prefix) + f"{scope}.{kind}"


def _graph_weights(graph: _Graph, prefix: str, norm_names: list[str]) -> dict[str, np.ndarray]:
    """torch parameter name (packed qkv.N / gate_up.N still packed) -> array for one exported graph. `norm_names`
    are the norm weights of the graph in the order its forward applies them (for the ones stored anonymously)."""
    out: dict[str, np.ndarray] = {}
    anonymous_norms: list[str] = []
    seen: set[str] = set()
    for node in graph.model.graph.node:
        for name in node.input:
            if name not in graph.inits or name in seen:
                continue
            seen.add(name)
            init = graph.inits[name]
            user, position, transposes = graph.user(name)
            if user is None:
                continue
            scope = [s for s in _scopes(user) if _SCOPE.fullmatch(s)]
            if user.op_type in ("MatMul", "Gemm") and position == 1 and len(init.dims) == 2:
                array = graph.array(name)
                trans_b = any(a.name == "transB" and a.i for a in user.attribute)
                # MatMul multiplies by (in, out); torch stores (out, in): count the transposes on the way
                if (transposes + trans_b) % 2 == 0:
                    array = array.T
                if _NAMED.fullmatch(name):
                    out[prefix + name] = array
                elif scope:
                    out[_linear_key(prefix, scope[-1], "weight")] = array
                elif name in ("t", "patch_weight"):  # the vision patch embedding (a Conv3d as a matmul)
                    out["model.visual.patch_embed.proj.weight"] = array
                continue
            if _NAMED.fullmatch(name):
                out[prefix + name] = graph.array(name)
            elif name == "norm_weight":
                out[prefix + "norm.weight"] = graph.array(name)
            elif user.op_type == "Add" and len(init.dims) == 1 and scope:
                out[_linear_key(prefix, scope[-1], "bias")] = graph.array(name)
            elif len(init.dims) == 1 and name.startswith("_to_copy") and (
                    user.op_type == "Mul" or user.op_type in _NORM_OPS and position == _NORM_OPS[user.op_type]):
                anonymous_norms.append(name)
    missing_norms = [n for n in norm_names if prefix + n not in out]
    if len(anonymous_norms) != len(missing_norms):
        raise BundleError(f"{graph.path}: found {len(anonymous_norms)} unnamed norm weights, expected "
                          f"{len(missing_norms)}; this bundle was not written by this project's exporter "
                          "(fine-tune from a checkpoint instead)")
    for torch_name, name in zip(missing_norms, anonymous_norms):
        out[prefix + torch_name] = graph.array(name)
    return out


def _unpack(weights: dict[str, np.ndarray], model_cfg: dict) -> dict[str, np.ndarray]:
    """The fused decoder's packed projections back into transformers' q/k/v and gate/up."""
    heads, kv, hd = model_cfg["num_attention_heads"], model_cfg["num_key_value_heads"], model_cfg["head_dim"]
    splits = {"qkv": ([heads * hd, kv * hd, kv * hd], ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]),
              "gate_up": (None, ["mlp.gate_proj", "mlp.up_proj"])}
    out = {}
    for name, array in weights.items():
        m = re.fullmatch(r"model\.language_model\.(qkv|gate_up)\.(\d+)\.(weight|bias)", name)
        if m is None:
            out[name] = array
            continue
        sizes, modules = splits[m[1]]
        sizes = sizes or [array.shape[0] // 2] * 2
        if sum(sizes) != array.shape[0]:
            raise BundleError(f"packed {m[1]} of layer {m[2]} has {array.shape[0]} rows, expected {sum(sizes)}")
        for module, part in zip(modules, np.split(array, np.cumsum(sizes)[:-1], axis=0)):
            out[f"model.language_model.layers.{m[2]}.{module}.{m[3]}"] = part
    return out


def _bundle_weights(root: Path, m: dict, graphs: dict[str, _Graph]) -> dict[str, np.ndarray]:
    v = m["model"]["vision"]
    vision_norms = [f"blocks.{i}.{n}.weight" for i in range(v["depth"]) for n in ("norm1", "norm2")]
    vision_norms.append("merger.ln_q.weight")
    text_norms = [f"layers.{i}.{n}.weight" for i in range(m["model"]["num_layers"])
                  for n in ("input_layernorm", "post_attention_layernorm")] + ["norm.weight"]
    weights = _graph_weights(graphs["vision"], "model.visual.", vision_norms)
    weights.update(_unpack(_graph_weights(graphs["decoder"], "model.language_model.", text_norms), m["model"]))
    weights["model.language_model.embed_tokens.weight"] = np.load(root / m["embed_tokens"]["path"],
                                                                  allow_pickle=False)
    return weights


def bundle_config(bundle_dir: str | Path, weights: dict[str, np.ndarray] | None = None,
                  decoder: _Graph | None = None):
    """A transformers Qwen2_5_VLConfig for a bundle: shapes and token ids from the manifest; what the manifest does
    not record (MLP widths, the norms' epsilon) from the graphs' weights and ops."""
    from tokenizers import Tokenizer
    from transformers import Qwen2_5_VLConfig

    from omniad_edge.bundle import load_bundle

    root = Path(bundle_dir)
    m = load_bundle(root).manifest
    mc, v, tokens = m["model"], m["model"]["vision"], m["tokens"]
    if weights is None or decoder is None:
        decoder = _Graph(root / m["graphs"]["decoder"]["path"])
        weights = _bundle_weights(root, m, {"vision": _Graph(root / m["graphs"]["vision"]["path"]),
                                            "decoder": decoder})
    eps = decoder.norm_epsilon()
    if eps is None:
        raise BundleError(f"bundle {root}: cannot find the decoder's RMSNorm epsilon in {decoder.path.name}")
    eps = float(str(np.float32(eps)))  # the float32 the graph holds, as written (1e-06)

    def width(name):  # MLP widths are not in the manifest: the gate projection's rows
        if name not in weights:
            raise BundleError(f"bundle {root}: no weights found for {name}; this bundle was not written by this "
                              "project's exporter")
        return int(weights[name].shape[0])

    tokenizer = Tokenizer.from_file(str(root / m["tokenizer"]["path"]))
    eos = tokens["eos"][0] if len(tokens["eos"]) == 1 else list(tokens["eos"])
    text = dict(hidden_size=mc["hidden_size"], num_hidden_layers=mc["num_layers"],
                intermediate_size=width("model.language_model.layers.0.mlp.gate_proj.weight"),
                num_attention_heads=mc["num_attention_heads"], num_key_value_heads=mc["num_key_value_heads"],
                max_position_embeddings=mc["max_position"], rms_norm_eps=eps, vocab_size=mc["vocab_size"],
                rope_parameters={"rope_type": "default", "rope_theta": mc["rope_theta"],
                                 "mrope_section": list(mc["mrope_section"])},
                bos_token_id=tokens["pad"], eos_token_id=eos, pad_token_id=tokens["pad"])
    vision = dict(depth=v["depth"], hidden_size=v["hidden_size"], num_heads=v["num_heads"],
                  intermediate_size=width("model.visual.blocks.0.mlp.gate_proj.weight"),
                  out_hidden_size=v["out_hidden_size"], patch_size=v["patch_size"],
                  spatial_merge_size=v["spatial_merge_size"], temporal_patch_size=v["temporal_patch_size"],
                  window_size=v["window_size"], fullatt_block_indexes=list(v["fullatt_block_indexes"]))
    video = tokenizer.token_to_id("<|video_pad|>")
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=tokens["image_pad"],
                            video_token_id=video, vision_start_token_id=tokens["vision_start"],
                            vision_end_token_id=tokens["vision_end"], tie_word_embeddings=False)


def _check_bundle(root: Path, m: dict) -> None:
    if m["precision"] not in ("fp32", "fp16"):
        raise BundleError(f"bundle {root}: precision {m['precision']!r} cannot be fine-tuned (quantized weights); "
                          "start from an fp32 or fp16 bundle or a checkpoint")
    if m["model"]["architecture"] != "qwen2_5_vl":
        raise BundleError(f"bundle {root}: architecture {m['model']['architecture']!r}; only Qwen2.5-VL bundles "
                          "are read back")


def model_from_bundle(bundle_dir: str | Path, reference_only: bool = True):
    """(Qwen2_5_VLForConditionalGeneration in float32, tokenizers.Tokenizer) from an fp32 or fp16 Qwen2.5-VL bundle.
    reference_only: refuse any shape but the reference architecture (training/model.py), as adapt needs. Raises
    BundleError when the bundle is quantized or of another shape."""
    import torch
    from tokenizers import Tokenizer
    from transformers import Qwen2_5_VLForConditionalGeneration

    from omniad_edge.bundle import load_bundle

    from .model import TEXT, VISION

    root = Path(bundle_dir)
    m = load_bundle(root).manifest
    _check_bundle(root, m)
    v = m["model"]["vision"]
    shape = (m["model"]["hidden_size"], m["model"]["num_layers"], v["hidden_size"], v["depth"])
    want = (TEXT["hidden_size"], TEXT["num_hidden_layers"], VISION["hidden_size"], VISION["depth"])
    if reference_only and shape != want:
        raise BundleError(f"bundle {root}: {m['model']['architecture']} with (hidden, layers, vision hidden, depth) "
                          f"{shape}; adapt fine-tunes the reference architecture {want} only")
    decoder = _Graph(root / m["graphs"]["decoder"]["path"])
    weights = _bundle_weights(root, m, {"vision": _Graph(root / m["graphs"]["vision"]["path"]), "decoder": decoder})
    config = bundle_config(root, weights, decoder)
    config._attn_implementation = "sdpa"
    model = Qwen2_5_VLForConditionalGeneration(config)
    state = model.state_dict()
    missing = sorted(set(state) - set(weights))
    if missing:
        raise BundleError(f"bundle {root}: no weights found for {', '.join(missing[:6])}"
                          f"{' ...' if len(missing) > 6 else ''}")
    for name, array in weights.items():
        if name not in state:
            raise BundleError(f"bundle {root}: weight {name!r} has no place in the Qwen2.5-VL architecture")
        target = state[name]
        if name == "model.visual.patch_embed.proj.weight" and array.size == target.numel():
            array = array.reshape(tuple(target.shape))  # the graph holds the Conv3d kernel flattened
        if tuple(array.shape) != tuple(target.shape):
            raise BundleError(f"bundle {root}: weight {name!r} has {array.shape}, the model wants "
                              f"{tuple(target.shape)}")
        state[name] = torch.from_numpy(np.asarray(array, np.float32).copy())
    model.load_state_dict(state)
    return model.float(), Tokenizer.from_file(str(root / m["tokenizer"]["path"]))


def save_bundle_as_hf(bundle_dir: str | Path, out_dir: str | Path) -> Path:
    """A Hugging Face checkpoint folder (float32 safetensors, config, tokenizer, chat template, preprocessor config,
    output_spec.json) from a bundle; `python -m export OUT_DIR ... --output-spec OUT_DIR/output_spec.json
    --max-image-tokens N --precision P` writes the bundle's weights again."""
    from omniad_edge.bundle import load_bundle

    from .train import save_hf

    root, out = Path(bundle_dir), Path(out_dir)
    m = load_bundle(root).manifest
    model, _ = model_from_bundle(root, reference_only=False)
    template = m.get("chat_template")
    save_hf(model, out, root / m["tokenizer"]["path"], bundle_spec(root), preprocess=m["preprocess"],
            chat_template=root / template["path"] if template else None)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.bundle_weights",
                                 description="Write a Hugging Face Qwen2.5-VL folder from an fp32/fp16 bundle's "
                                             "ONNX weights (to re-export or fine-tune a model shipped as a bundle)")
    ap.add_argument("bundle", type=Path)
    ap.add_argument("out", type=Path, help="checkpoint folder to write (replaced if it exists)")
    args = ap.parse_args(argv)
    try:
        save_bundle_as_hf(args.bundle, args.out)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    m = json.loads((args.bundle / "manifest.json").read_text(encoding="utf-8"))
    print(f"{args.out}; re-export with: python -m export {args.out} BUNDLE --output-spec "
          f"{args.out / 'output_spec.json'} --max-image-tokens {m['preprocess']['max_image_tokens']} "
          f"--precision {m['precision']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
