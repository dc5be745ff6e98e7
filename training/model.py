"""The reference model's configuration: Qwen2.5-VL's architecture at a size that trains on 2 CPU cores.

Text: hidden 256, 4 layers, 4 heads of 64 (2 KV heads), mrope sections [2, 15, 15] over rope_theta 10.
Vision: depth 4, hidden 128, window attention (112 px) with one full-attention block (the last), merger to 256.
A 224x224 frame is 16x16 patches -> 8x8 = 64 image tokens, and one patch covers one cell of the 16x16 mask grid.

Why this rope: Qwen2.5-VL's mrope gives the t, h and w axes contiguous slices of the frequency band, so w always gets
the lowest frequencies. With the usual theta (1e4) and [8, 12, 12], the w frequencies are 0.0032..0.00013 rad per
position: 8 image columns differ by < 0.03 rad and the decoder cannot tell them apart (the vision tower has no
absolute position in its features either). A model trained so wrote the right rows and near-random columns (row IoU
0.62, column IoU 0.18 on the frames it flagged). theta 10 with [2, 15, 15] gives h 0.87..0.32 and w 0.30..0.11 rad
per position; t, which is constant over one image, keeps two frequencies. Qwen3-VL interleaves the axes for the same
reason.
"""
from __future__ import annotations

TEXT = dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 10.0, "mrope_section": [2, 15, 15]})
VISION = dict(depth=4, hidden_size=128, intermediate_size=512, num_heads=4, out_hidden_size=256, patch_size=14,
              spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[3],
              tokens_per_second=2)


def make_config(tokenizer):
    """A Qwen2_5_VLConfig whose token ids come from `tokenizer` (a tokenizers.Tokenizer)."""
    from transformers import Qwen2_5_VLConfig

    def tid(text):
        i = tokenizer.token_to_id(text)
        if i is None:
            raise ValueError(f"tokenizer lacks the special token {text!r}")
        return i

    vocab = -(-tokenizer.get_vocab_size(with_added_tokens=True) // 64) * 64  # padded; extra rows never sampled
    text = dict(TEXT, vocab_size=vocab, bos_token_id=tid("<|endoftext|>"), eos_token_id=tid("<|im_end|>"),
                pad_token_id=tid("<|endoftext|>"))
    return Qwen2_5_VLConfig(text_config=text, vision_config=dict(VISION), image_token_id=tid("<|image_pad|>"),
                            video_token_id=tid("<|video_pad|>"), vision_start_token_id=tid("<|vision_start|>"),
                            vision_end_token_id=tid("<|vision_end|>"), tie_word_embeddings=False)


def make_model(tokenizer, seed: int = 0):
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    config = make_config(tokenizer)
    config._attn_implementation = "sdpa"
    return Qwen2_5_VLForConditionalGeneration(config)
