"""Load and validate a Hugging Face Qwen2.5-VL or Qwen2-VL checkpoint folder before anything heavy runs.

Every problem is an ExportError that names the file or setting, so a user fixes their folder instead of reading a
traceback from deep inside transformers.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from omniad_edge.errors import ExportError

__all__ = ["Checkpoint", "inspect_checkpoint", "load_model", "ARCHITECTURES"]

# config.json model_type -> transformers class; the manifest's model.architecture is the model_type
ARCHITECTURES = {"qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration", "qwen2_vl": "Qwen2VLForConditionalGeneration"}

_SPECIAL = {
    "image_pad": "<|image_pad|>",
    "vision_start": "<|vision_start|>",
    "vision_end": "<|vision_end|>",
}
_CONFIG_IDS = {"image_pad": "image_token_id", "vision_start": "vision_start_token_id",
               "vision_end": "vision_end_token_id"}


@dataclass
class Checkpoint:
    path: Path
    config: dict  # config.json as written
    tokenizer_json: Path
    chat_template: str | None
    preprocessor: dict  # preprocessor_config.json, {} when absent
    tokens: dict  # the manifest's tokens section
    weight_files: list[Path] = field(default_factory=list)

    @property
    def text(self) -> dict:
        """Text-model settings whether config.json is nested (text_config) or flat (older checkpoints)."""
        nested = self.config.get("text_config") or {}
        return {**self.config, **nested}

    @property
    def vision(self) -> dict:
        return self.config["vision_config"]

    @property
    def architecture(self) -> str:
        return self.config["model_type"]


def read_json_object(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{what}: {path} is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{what}: {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ExportError(f"{what}: {path} must hold a JSON object, got {type(data).__name__}")
    return data


def _check_safetensors(path: Path) -> None:
    """Header sanity only (8-byte length + JSON + data sizes): catches truncated downloads cheaply."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n <= 0 or 8 + n > size:
                raise ValueError(f"header length {n} does not fit in {size} bytes")
            header = json.loads(f.read(n))
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise ExportError(f"weights: {path.name} is not a valid safetensors file ({exc})") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise ExportError(f"weights: {path.name} is truncated ({size} bytes, header promises {8 + n + end})")


def _token_id(tokenizer_json: dict, content: str) -> int | None:
    for added in tokenizer_json.get("added_tokens", []):
        if added.get("content") == content:
            return int(added["id"])
    vocab = tokenizer_json.get("model", {}).get("vocab")
    if isinstance(vocab, dict) and content in vocab:
        return int(vocab[content])
    return None


def _token_text(value) -> str | None:
    if isinstance(value, dict):  # tokenizer_config may store AddedToken dicts
        return value.get("content")
    return value if isinstance(value, str) else None


def _tokens(path: Path, config: dict, text: dict, tokenizer: dict) -> dict:
    tokens = {}
    for key, content in _SPECIAL.items():
        tid = _token_id(tokenizer, content)
        if tid is None:
            raise ExportError(f"tokenizer.json: has no {content} token; a Qwen2-VL/Qwen2.5-VL tokenizer needs it")
        declared = config.get(_CONFIG_IDS[key])
        if declared is not None and int(declared) != tid:
            raise ExportError(f"config.json: {_CONFIG_IDS[key]}={declared} but tokenizer.json has {content} at {tid}")
        tokens[key] = tid

    tok_cfg = read_json_object(path / "tokenizer_config.json", "tokenizer_config") \
        if (path / "tokenizer_config.json").exists() else {}
    gen_cfg = read_json_object(path / "generation_config.json", "generation_config") \
        if (path / "generation_config.json").exists() else {}

    eos: list[int] = []
    for source in (gen_cfg.get("eos_token_id"), text.get("eos_token_id")):
        for tid in source if isinstance(source, list) else [source]:
            if tid is not None and int(tid) not in eos:
                eos.append(int(tid))
    eos_text = _token_text(tok_cfg.get("eos_token"))
    if eos_text is not None:
        tid = _token_id(tokenizer, eos_text)
        if tid is None:
            raise ExportError(f"tokenizer_config.json: eos_token {eos_text!r} is not in tokenizer.json")
        if tid not in eos:
            eos.insert(0, tid)
    if not eos:
        raise ExportError("no end-of-sequence token: set eos_token_id in config.json/generation_config.json "
                          "or eos_token in tokenizer_config.json")

    pad = None
    pad_text = _token_text(tok_cfg.get("pad_token"))
    if pad_text is not None:
        pad = _token_id(tokenizer, pad_text)
    for candidate in (gen_cfg.get("pad_token_id"), text.get("pad_token_id")):
        if pad is None and candidate is not None:
            pad = int(candidate)
    tokens.update(eos=eos, pad=pad if pad is not None else eos[-1])
    return tokens


def inspect_checkpoint(path) -> Checkpoint:
    """Validate the folder without loading weights: config, safetensors headers, tokenizer, special tokens."""
    path = Path(path)
    if not path.is_dir():
        raise ExportError(f"checkpoint: {path} is not a directory")
    config = read_json_object(path / "config.json", "config")
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ExportError(f"config.json: model_type is {model_type!r}; only {', '.join(map(repr, ARCHITECTURES))} "
                          f"checkpoints can be exported")
    if not isinstance(config.get("vision_config"), dict):
        raise ExportError(f"config.json: vision_config is missing; a {model_type} checkpoint needs it")
    nested = config.get("text_config") or {}
    text = {**config, **nested}
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if not isinstance(text.get(key), int) or text[key] <= 0:
            raise ExportError(f"config.json: {key} must be a positive int, got {text.get(key)!r}")
    if text.get("use_sliding_window"):
        raise ExportError("config.json: use_sliding_window=true is not supported (the decoder graph attends fully)")
    rope = text.get("rope_scaling") or text.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "mrope"):
        raise ExportError(f"config.json: rope type {rope_type!r} is not supported (only mrope/default)")
    if "mrope_section" in rope and (sum(rope["mrope_section"]) * 2
                                    != text["hidden_size"] // text["num_attention_heads"]):
        raise ExportError(f"config.json: mrope_section {rope['mrope_section']} does not sum to head_dim/2")

    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise ExportError(f"checkpoint: no *.safetensors file in {path} (.bin/pickle weights are not accepted)")
    index = path / "model.safetensors.index.json"
    if index.exists():
        needed = set(read_json_object(index, "weights index").get("weight_map", {}).values())
        missing = sorted(n for n in needed if not (path / n).exists())
        if missing:
            raise ExportError(f"weights: files named in model.safetensors.index.json are missing: {missing}")
    for w in weights:
        _check_safetensors(w)

    tokenizer_json = path / "tokenizer.json"
    tokenizer = read_json_object(tokenizer_json, "tokenizer")
    if "model" not in tokenizer:
        raise ExportError(f"tokenizer: {tokenizer_json} is not a `tokenizers` tokenizer.json (no 'model')")
    tokens = _tokens(path, config, text, tokenizer)
    vocab = text["vocab_size"]
    for key in ("image_pad", "vision_start", "vision_end", "pad"):
        if not 0 <= tokens[key] < vocab:
            raise ExportError(f"token {key}={tokens[key]} is outside the model's vocab_size {vocab}")

    chat_template = None
    if (path / "chat_template.jinja").exists():
        chat_template = (path / "chat_template.jinja").read_text(encoding="utf-8")
    elif (path / "chat_template.json").exists():
        chat_template = read_json_object(path / "chat_template.json", "chat_template").get("chat_template")
    elif (path / "tokenizer_config.json").exists():
        chat_template = read_json_object(path / "tokenizer_config.json", "tokenizer_config").get("chat_template")
    preprocessor = read_json_object(path / "preprocessor_config.json", "preprocessor_config") \
        if (path / "preprocessor_config.json").exists() else {}
    return Checkpoint(path, config, tokenizer_json, chat_template, preprocessor, tokens, weights)


def load_model(checkpoint: Checkpoint, dtype="auto"):
    """The transformers model in eval mode, eager attention (plain ops, same math as our graphs).

    dtype "auto": the checkpoint's own (bfloat16 for the published Qwen checkpoints): half the memory of float32,
    and exact, since the graphs convert weights to their precision (bfloat16 -> float32 loses nothing)."""
    import transformers

    try:
        model = getattr(transformers, ARCHITECTURES[checkpoint.architecture]).from_pretrained(
            checkpoint.path, dtype=dtype, attn_implementation="eager")
    except Exception as exc:  # transformers raises many types for a bad folder; name the folder and the cause
        raise ExportError(f"checkpoint: transformers could not load {checkpoint.path}: {exc}") from exc
    return model.eval()
