"""The bundle manifest (DESIGN.md, engine bundle format_version 1): defaults, user overrides, sha256 of files.

The output grammar and the prompt templates depend on how the model was fine-tuned, so they come from defaults
that a JSON file (`--output-spec`) overrides key by key: {"name": ..., "prompt": {...}, "output": {...}}.
"""
from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
from pathlib import Path

from omniad_edge.contract import BUNDLE_FORMAT as FORMAT
from omniad_edge.contract import BUNDLE_FORMAT_VERSION as FORMAT_VERSION
from omniad_edge.contract import OUTPUT_SECTIONS as _SECTIONS
from omniad_edge.errors import ExportError

from .checkpoint import read_json_object

__all__ = ["FORMAT", "FORMAT_VERSION", "DEFAULT_PROMPT", "DEFAULT_OUTPUT", "load_output_spec", "model_section",
           "preprocess_section", "file_entries", "sha256_file", "build_manifest", "write_manifest"]

DEFAULT_PROMPT = {
    "template": "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{content}<|im_end|>\n"
                "<|im_start|>assistant\n",
    "image": "<|vision_start|>{image_pads}<|vision_end|>",
    "system": "You are an industrial inspector. Look for defects on the part in the query image: first write the "
              "anomaly mask, then explain what you see, then answer whether the part is anomalous.",
    "detect": "Inspect the part. Write the anomaly mask, then explain, then answer.",
    "reference_intro": "Following is {n} image of normal sample, which can be used as a template to compare the "
                       "image being queried.",
    "query_intro": "Following is the query image:",
}

DEFAULT_OUTPUT = {
    "order": ["mask", "explanation", "answer"],
    "tags": {"mask": ["<seg>", "</seg>"], "explanation": ["<think>", "</think>"], "answer": ["<answer>", "</answer>"]},
    "mask": {"codec": "compact", "grid": 16, "labels": ["others", "anomaly"], "background": 0, "coverage": 0.02},
    "answers": {"anomalous": "yes", "normal": "no"},
}

# the placeholders each template must accept (str.format fields)
_PROMPT_FIELDS = {"template": {"system", "content"}, "image": {"image_pads"}, "system": set(), "detect": set(),
                  "reference_intro": {"n"}, "query_intro": set()}


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _check_prompt(prompt: dict) -> None:
    import string

    for key, fields in _PROMPT_FIELDS.items():
        text = prompt.get(key)
        if not isinstance(text, str):
            raise ExportError(f"output spec: prompt.{key} must be a string, got {text!r}")
        try:
            used = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
        except ValueError as exc:
            raise ExportError(f"output spec: prompt.{key} is not a valid str.format template ({exc})") from None
        if used != fields:
            raise ExportError(f"output spec: prompt.{key} must use exactly the fields {sorted(fields)}, "
                              f"uses {sorted(used)} (write literal braces as {{{{ }}}})")


def _check_output(output: dict) -> None:
    order = output.get("order")
    if not isinstance(order, list) or not order or not set(order) <= set(_SECTIONS) or len(set(order)) != len(order):
        raise ExportError(f"output spec: output.order must list distinct sections among {list(_SECTIONS)}, "
                          f"got {order!r}")
    if "answer" not in order:
        raise ExportError("output spec: output.order must include 'answer'")
    tags = output.get("tags", {})
    for section in order:
        pair = tags.get(section)
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) and t for t in pair)):
            raise ExportError(f"output spec: output.tags.{section} must be [open, close] strings, got {pair!r}")
    mask = output.get("mask", {})
    if "mask" in order:
        if not isinstance(mask.get("codec"), str) or not mask["codec"]:
            raise ExportError(f"output spec: output.mask.codec must be a codec name, got {mask.get('codec')!r}")
        if not isinstance(mask.get("grid"), int) or not 1 <= mask["grid"] <= 256:
            raise ExportError(f"output spec: output.mask.grid must be an int in 1..256, got {mask.get('grid')!r}")
        labels = mask.get("labels")
        if not (isinstance(labels, list) and len(labels) >= 2 and all(isinstance(x, str) and x for x in labels)
                and len(set(labels)) == len(labels)):
            raise ExportError(f"output spec: output.mask.labels must be >= 2 distinct strings, got {labels!r}")
        background = mask.get("background")
        if not isinstance(background, int) or not 0 <= background < len(labels):
            raise ExportError(f"output spec: output.mask.background must index labels, got {background!r}")
        coverage = mask.get("coverage", 0.0)
        if not isinstance(coverage, (int, float)) or not 0 <= coverage < 1:
            raise ExportError(f"output spec: output.mask.coverage must be in [0, 1), got {coverage!r}")
        try:  # the runtime's own codec checks (codec name, grid range, label syntax) at export time, not on the device
            from omniad_edge.tam import codec_from_spec

            codec_from_spec(mask, tags=tuple(tags["mask"]))
        except (TypeError, ValueError) as exc:
            raise ExportError(f"output spec: output.mask: {exc}") from None
    answers = output.get("answers", {})
    if not (isinstance(answers.get("anomalous"), str) and isinstance(answers.get("normal"), str)
            and answers["anomalous"] and answers["normal"] and answers["anomalous"] != answers["normal"]):
        raise ExportError(f"output spec: output.answers needs distinct non-empty 'anomalous' and 'normal', "
                          f"got {answers!r}")


def load_output_spec(path=None, preset: str | None = None) -> dict:
    """{"name": str | None, "prompt": {...}, "output": {...}}: defaults, overridden by the named preset
    (export/presets.py), overridden by the JSON file at `path`."""
    from .presets import preset_spec

    base = preset_spec(preset)
    override = {}
    if path is not None:
        override = read_json_object(Path(path), "output spec")
        unknown = set(override) - {"name", "prompt", "output"}
        if unknown:
            raise ExportError(f"output spec: unknown keys {sorted(unknown)}; allowed: name, prompt, output")
    spec = {"name": override.get("name"),
            "prompt": _merge(_merge(DEFAULT_PROMPT, base.get("prompt", {})), override.get("prompt", {})),
            "output": _merge(_merge(DEFAULT_OUTPUT, base.get("output", {})), override.get("output", {}))}
    if spec["name"] is not None and (not isinstance(spec["name"], str) or not spec["name"]):
        raise ExportError(f"output spec: name must be a non-empty string, got {spec['name']!r}")
    _check_prompt(spec["prompt"])
    _check_output(spec["output"])
    return spec


def _vision_section(architecture: str, vision: dict) -> dict:
    """The tower's shape; Qwen2-VL names its width embed_dim (its hidden_size is the merger's output), has an MLP
    ratio instead of a size, and no windows: every block attends over the whole frame (window_size None)."""
    common = {"depth": vision.get("depth", 32), "num_heads": vision.get("num_heads", 16),
              "patch_size": vision.get("patch_size", 14), "temporal_patch_size": vision.get("temporal_patch_size", 2),
              "spatial_merge_size": vision.get("spatial_merge_size", 2)}
    if architecture == "qwen2_vl":
        width = vision.get("embed_dim", 1280)
        return {**common, "hidden_size": width, "intermediate_size": int(width * vision.get("mlp_ratio", 4)),
                "out_hidden_size": vision.get("hidden_size", 3584), "window_size": None,
                "fullatt_block_indexes": list(range(common["depth"]))}
    return {**common, "hidden_size": vision.get("hidden_size", 1280),
            "intermediate_size": vision.get("intermediate_size", 3420),
            "out_hidden_size": vision.get("out_hidden_size", 3584), "window_size": vision.get("window_size", 112),
            "fullatt_block_indexes": list(vision.get("fullatt_block_indexes", [7, 15, 23, 31]))}


def model_section(checkpoint) -> dict:
    text = checkpoint.text
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    heads = text["num_attention_heads"]
    head_dim = text["hidden_size"] // heads
    return {
        "architecture": checkpoint.architecture,
        "hidden_size": text["hidden_size"], "num_layers": text["num_hidden_layers"],
        "num_attention_heads": heads, "num_key_value_heads": text.get("num_key_value_heads") or heads,
        "head_dim": head_dim, "vocab_size": text["vocab_size"],
        "rope_theta": float(rope.get("rope_theta", text.get("rope_theta", 1000000.0))),
        "mrope_section": list(rope.get("mrope_section", [16, 24, 24])),
        "max_position": int(text.get("max_position_embeddings", 32768)),
        "vision": _vision_section(checkpoint.architecture, checkpoint.vision),
    }


def preprocess_section(checkpoint, model: dict, max_image_tokens: int) -> dict:
    """Preprocessing settings from preprocessor_config.json (processor defaults where absent), checked against
    the vision tower; max_pixels is capped so an image never yields more than max_image_tokens merged tokens."""
    if not isinstance(max_image_tokens, int) or max_image_tokens < 4:
        raise ExportError(f"max_image_tokens must be an int >= 4, got {max_image_tokens!r}")
    cfg = checkpoint.preprocessor
    size = cfg.get("size") or {}
    vision = model["vision"]
    spec = {
        "patch_size": int(cfg.get("patch_size", vision["patch_size"])),
        "merge_size": int(cfg.get("merge_size", vision["spatial_merge_size"])),
        "temporal_patch_size": int(cfg.get("temporal_patch_size", vision["temporal_patch_size"])),
        "min_pixels": int(cfg.get("min_pixels", size.get("shortest_edge", 56 * 56))),
        "max_pixels": int(cfg.get("max_pixels", size.get("longest_edge", 28 * 28 * 1280))),
        "mean": [float(x) for x in cfg.get("image_mean", [0.48145466, 0.4578275, 0.40821073])],
        "std": [float(x) for x in cfg.get("image_std", [0.26862954, 0.26130258, 0.27577711])],
        "resample": {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}.get(cfg.get("resample", 3)),
        "max_image_tokens": max_image_tokens,
    }
    for key, vkey in (("patch_size", "patch_size"), ("merge_size", "spatial_merge_size"),
                      ("temporal_patch_size", "temporal_patch_size")):
        if spec[key] != vision[vkey]:
            raise ExportError(f"preprocessor_config.json: {key}={spec[key]} but the vision tower has "
                              f"{vkey}={vision[vkey]}")
    if spec["resample"] is None:
        raise ExportError(f"preprocessor_config.json: unsupported resample {cfg.get('resample')!r}")
    if len(spec["mean"]) != 3 or len(spec["std"]) != 3 or min(spec["std"]) <= 0:
        raise ExportError("preprocessor_config.json: image_mean/image_std must be 3 values, std positive")
    token_area = (spec["patch_size"] * spec["merge_size"]) ** 2
    spec["max_pixels"] = min(spec["max_pixels"], max_image_tokens * token_area)
    if spec["min_pixels"] > spec["max_pixels"]:
        raise ExportError(f"max_image_tokens={max_image_tokens} allows {spec['max_pixels']} pixels, below "
                          f"min_pixels={spec['min_pixels']}")
    return spec


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_entries(bundle_dir: Path) -> dict:
    """{relative posix path: {"sha256", "bytes"}} for every file except manifest.json."""
    entries = {}
    for path in sorted(p for p in Path(bundle_dir).rglob("*") if p.is_file()):
        rel = path.relative_to(bundle_dir).as_posix()
        if rel != "manifest.json":
            entries[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return entries


def build_manifest(*, name: str, precision: str, model: dict, tokens: dict, preprocess: dict, spec: dict,
                   graphs: dict, embed: dict, files: dict, exporter: dict, has_chat_template: bool,
                   target: str = "ort") -> dict:
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "target": target,
        "precision": precision,
        "model": model,
        "tokens": tokens,
        "preprocess": preprocess,
        "prompt": spec["prompt"],
        "output": spec["output"],
        "graphs": graphs,
        "files": files,
        "embed_tokens": embed,
        "tokenizer": {"path": "tokenizer.json"},
        "exporter": exporter,
    }
    if has_chat_template:
        manifest["chat_template"] = {"path": "chat_template.jinja"}
    return manifest


def exporter_section(source: str, graph_info: dict) -> dict:
    import onnx
    import onnxruntime
    import torch
    import transformers

    from omniad_edge import __version__

    return {"name": "omniad_edge.export", "version": __version__, "torch": torch.__version__.split("+")[0],
            "transformers": transformers.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "source": source,
            "graphs": graph_info}


def write_manifest(bundle_dir: Path, manifest: dict) -> Path:
    path = Path(bundle_dir) / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
