"""transformers' own pipeline as the reference: its PIL image processor and `generate()` (greedy)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=4)
def load_hf(checkpoint_dir: str):
    import torch
    import transformers

    from export.checkpoint import ARCHITECTURES, inspect_checkpoint

    model_class = getattr(transformers, ARCHITECTURES[inspect_checkpoint(checkpoint_dir).architecture])
    torch.manual_seed(0)
    return model_class.from_pretrained(checkpoint_dir, dtype=torch.float32).eval()


def hf_processor(preprocess: dict):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(min_pixels=preprocess["min_pixels"], max_pixels=preprocess["max_pixels"],
                                    patch_size=preprocess["patch_size"], merge_size=preprocess["merge_size"],
                                    temporal_patch_size=preprocess["temporal_patch_size"],
                                    image_mean=preprocess["mean"], image_std=preprocess["std"])


def hf_generate(checkpoint_dir, manifest: dict, prompts_ids: list[np.ndarray], frames: list[list[np.ndarray]],
                max_new_tokens: int = 16):
    """Greedy tokens (per sequence, cut after eos) and raw logits per step (B, V), left padding for batches.

    Pixels come from transformers' processor, not ours, so the comparison covers preprocessing too."""
    import torch

    model = load_hf(str(checkpoint_dir))
    tokens = manifest["tokens"]
    proc = hf_processor(manifest["preprocess"])
    flat = [f for seq in frames for f in seq]
    width = max(len(ids) for ids in prompts_ids)
    input_ids = torch.full((len(prompts_ids), width), tokens["pad"], dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    for b, ids in enumerate(prompts_ids):
        input_ids[b, width - len(ids):] = torch.from_numpy(np.asarray(ids, dtype=np.int64))
        attention[b, width - len(ids):] = 1
    kwargs = {}
    if flat:
        feats = proc(images=flat, return_tensors="pt")
        kwargs = {"pixel_values": feats["pixel_values"], "image_grid_thw": feats["image_grid_thw"]}
    # without mm_token_type_ids transformers 5.x silently falls back to 1-D positions
    mm = ((input_ids == tokens["image_pad"]) & (attention == 1)).int()
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=attention, mm_token_type_ids=mm, do_sample=False,
                             max_new_tokens=max_new_tokens, eos_token_id=list(tokens["eos"]),
                             pad_token_id=tokens["pad"], output_logits=True, return_dict_in_generate=True, **kwargs)
    eos = set(tokens["eos"])
    result = []
    for row in out.sequences[:, width:].tolist():
        seq = []
        for t in row:
            seq.append(t)
            if t in eos:
                break
        result.append(seq)
    return result, [x.float().numpy() for x in out.logits], kwargs.get("image_grid_thw")
