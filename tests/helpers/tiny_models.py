"""Tiny Qwen2.5-VL and Qwen2-VL checkpoints with random weights (fixed seeds), written as Hugging Face folders.

Two vocabularies: a small custom byte-level tokenizer with Qwen's chat/vision special tokens at ids of its own (so
nothing may hard-code Qwen's ids), and the real Qwen2.5 tokenizer (151,936 rows) when its tokenizer.json is given.
"""
from __future__ import annotations

import json
from pathlib import Path

# Qwen's special tokens, in Qwen's order; the custom tokenizer puts them after its 256 byte tokens
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                 "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
# output-grammar tags as single (non-special) tokens, so grammar/codec tests get one token per tag
CUSTOM_TAGS = ["<seg>", "</seg>", "<think>", "</think>", "<answer>", "</answer>"]
CUSTOM_VOCAB_SIZE = 320  # > 256 bytes + 20 added tokens; padded like Qwen's 151,936 > 151,665

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]})
VISION = dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
              spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1, 3],
              tokens_per_second=2)
# window_size 56 -> 2x2 merged tokens per window, so small test images still span several windows
# Qwen2-VL's tower: LayerNorm, QuickGELU MLP (embed_dim * mlp_ratio), full attention in every block, no window
VISION_QWEN2 = dict(depth=3, embed_dim=32, hidden_size=TEXT["hidden_size"], num_heads=2, mlp_ratio=2, patch_size=14,
                    spatial_merge_size=2, temporal_patch_size=2)
ARCHITECTURES = ("qwen2_5_vl", "qwen2_vl")


def custom_tokenizer():
    """Byte-level BPE without merges (one token per byte) plus Qwen's specials and the grammar tags."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(QWEN_SPECIALS)
    tok.add_tokens(CUSTOM_TAGS)
    return tok


def _model(architecture: str, vocab_size: int, ids: dict, tie: bool, text: dict, vision: dict | None):
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                              Qwen2VLForConditionalGeneration)

    config, model, default = {"qwen2_5_vl": (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, VISION),
                              "qwen2_vl": (Qwen2VLConfig, Qwen2VLForConditionalGeneration, VISION_QWEN2)}[architecture]
    cfg = config(
        text_config={**text, "vocab_size": vocab_size, "eos_token_id": ids["<|im_end|>"],
                     "bos_token_id": ids["<|endoftext|>"], "pad_token_id": ids["<|endoftext|>"]},
        vision_config=dict(vision or default),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=tie,
    )
    return model(cfg).eval()


def write_tiny_checkpoint(out_dir, *, qwen_tokenizer_json=None, seed: int = 0, tie: bool | None = None,
                          architecture: str = "qwen2_5_vl", text: dict | None = None, vision: dict | None = None,
                          init_std: float = 0.08) -> Path:
    """A Hugging Face folder: config, safetensors, tokenizer files, chat template, preprocessor config.

    qwen_tokenizer_json: path of the real Qwen2.5 tokenizer.json (vocab 151,936); None for the custom one.
    tie: tied input/output embeddings; default untied for the custom vocabulary (like Qwen2.5-VL-7B; greedy
    tokens then vary with the image) and tied for the real one (like 3B; halves its 39 MB of vocabulary rows).
    architecture: "qwen2_5_vl" (window + full attention blocks) or "qwen2_vl" (full attention, LayerNorm).
    text, vision: config overrides (benchmarks build wider towers this way); init_std: std of the random matrices."""
    import torch
    from tokenizers import Tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if qwen_tokenizer_json is None:
        tok = custom_tokenizer()
        vocab_size = CUSTOM_VOCAB_SIZE
    else:
        tok = Tokenizer.from_file(str(qwen_tokenizer_json))
        vocab_size = 151936
    ids = {t: tok.token_to_id(t) for t in QWEN_SPECIALS}
    tie = qwen_tokenizer_json is not None if tie is None else tie
    tok.save(str(out / "tokenizer.json"))

    torch.manual_seed(seed)
    model = _model(architecture, vocab_size, ids, tie, text or TEXT, vision)
    with torch.no_grad():
        # larger than the default init so greedy argmax margins dwarf float rounding differences
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, init_std)
    model.save_pretrained(out)

    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "tokenizer_class": "Qwen2Tokenizer",
        "model_max_length": 4096}, indent=1))
    (out / "generation_config.json").write_text(json.dumps({
        "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]], "pad_token_id": ids["<|endoftext|>"],
        "do_sample": False}, indent=1))
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Qwen2VLImageProcessor", "min_pixels": 56 * 56, "max_pixels": 28 * 28 * 256,
        "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]},
        indent=1))
    return out
