"""Training examples from synthetic frames, tokenized exactly as the edge runtime will see them.

Pixels go through omniad_edge.preprocess and prompts through omniad_edge.prompt (the runtime's own code), so
training and inference share resize, normalisation, patch order and prompt tokens. Only the assistant turn
(target text + <|im_end|>) carries loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omniad_edge import synth

from .splits import split_seed
from omniad_edge.preprocess import preprocess_image
from omniad_edge.prompt import PromptBuilder
from omniad_edge.tokenizer import Tokenizer

from . import spec as S

IGNORE = -100


@dataclass
class Example:
    input_ids: np.ndarray  # (S,) int64: prompt + target + <|im_end|>
    labels: np.ndarray  # (S,) int64, IGNORE on the prompt
    pixel_values: np.ndarray  # (N, 1176) float32
    grid_thw: tuple[int, int, int]
    prompt_len: int
    target: str
    patch_labels: np.ndarray | None = None  # (N/4, 4) int64: defect label of each patch, per merged token


def patch_labels(mask: np.ndarray, label: int, resized: tuple[int, int], grid_thw, patch: int = 14,
                 merge: int = 2, coverage: float = 0.02) -> np.ndarray:
    """Per-patch labels for the auxiliary dense loss: the pixel mask resized like the frame (nearest), a patch takes
    `label` when >= coverage of it is defect; laid out as the merger's tokens (raster order, 2x2 patches each)."""
    from PIL import Image

    _, gh, gw = grid_thw
    h, w = resized
    m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 127
    cover = m.reshape(gh, patch, gw, patch).mean(axis=(1, 3))
    cells = np.where(cover >= coverage, label, 0).astype(np.int64)
    blocks = cells.reshape(gh // merge, merge, gw // merge, merge).transpose(0, 2, 1, 3)
    return blocks.reshape(-1, merge * merge)


class Encoder:
    """Frame + target grid -> Example, with the spec, tokenizer and prompt builder loaded once."""

    def __init__(self, tokenizer_path: str | Path, spec: dict | None = None):
        self.spec = spec or S.load_spec()
        self.tokenizer = Tokenizer(tokenizer_path)
        tok = self.tokenizer
        self.tokens = {"image_pad": tok.token_to_id("<|image_pad|>"), "vision_start": tok.token_to_id("<|vision_start|>"),
                       "vision_end": tok.token_to_id("<|vision_end|>"), "eos": [tok.token_to_id("<|im_end|>")],
                       "pad": tok.token_to_id("<|endoftext|>")}
        self.builder = PromptBuilder(self.spec["prompt"], self.tokens, tok)
        self.merge = int(S.PREPROCESS["merge_size"])

    def prompt(self, image: np.ndarray):
        """(PreprocessedImage, Prompt) for one HxWx3 uint8 RGB frame."""
        pre = preprocess_image(image, S.PREPROCESS)
        _, gh, gw = pre.grid_thw
        return pre, self.builder.detect([gh * gw // (self.merge * self.merge)])

    def encode(self, image: np.ndarray, grid: np.ndarray, mask: np.ndarray | None = None, label: int = 0
               ) -> Example:
        pre, prompt = self.prompt(image)
        target = S.target_text(self.spec, grid)
        target_ids = self.tokenizer.encode(target) + list(self.tokens["eos"])
        ids = np.concatenate([prompt.ids, np.asarray(target_ids, np.int64)])
        labels = ids.copy()
        labels[: len(prompt)] = IGNORE
        dense = None
        if mask is not None:
            dense = patch_labels(mask, label, pre.resized, pre.grid_thw, int(S.PREPROCESS["patch_size"]),
                                 self.merge, float(self.spec["output"]["mask"]["coverage"]))
        return Example(ids, labels, pre.pixel_values, pre.grid_thw, len(prompt), target, dense)

    def sample(self, sample: synth.Sample, image: np.ndarray | None = None) -> Example:
        label = self.spec["output"]["mask"]["labels"].index(sample.defect) if sample.anomalous else 0
        return self.encode(sample.image if image is None else image, S.sample_grid(self.spec, sample),
                           sample.mask, label)


def training_frame(split: str, index: int, size: int = 224, vary: bool = True):
    """(sample, RGB frame) of a split. With vary, a quarter of the frames get another size (160..320 px a side,
    so the runtime's resize is trained on) and a tenth are shown in grey, both decided by the frame's seed."""
    seed = split_seed(split, index)
    shape: int | tuple[int, int] = size
    grey = False
    if vary:
        rng = np.random.default_rng([seed, 7])
        if rng.random() < 0.25:
            shape = (int(rng.integers(160, 321)), int(rng.integers(160, 321)))
        grey = bool(rng.random() < 0.1)
    sample = synth.make_sample(seed, size=shape)
    image = sample.image
    if grey:
        luma = image.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32)
        image = np.repeat(np.clip(luma + 0.5, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    return sample, image


def collate(examples: list[Example], pad_id: int, image_pad_id: int):
    """Right-padded torch batch for Qwen2_5_VLForConditionalGeneration.forward."""
    import torch

    n = max(len(e.input_ids) for e in examples)
    ids = np.full((len(examples), n), pad_id, np.int64)
    labels = np.full((len(examples), n), IGNORE, np.int64)
    attn = np.zeros((len(examples), n), np.int64)
    for i, e in enumerate(examples):
        ids[i, : len(e.input_ids)] = e.input_ids
        labels[i, : len(e.labels)] = e.labels
        attn[i, : len(e.input_ids)] = 1
    batch = {
        "input_ids": torch.from_numpy(ids),
        "labels": torch.from_numpy(labels),
        "attention_mask": torch.from_numpy(attn),
        "mm_token_type_ids": torch.from_numpy((ids == image_pad_id).astype(np.int64)),
        "pixel_values": torch.from_numpy(np.concatenate([e.pixel_values for e in examples])),
        "image_grid_thw": torch.tensor([e.grid_thw for e in examples], dtype=torch.long),
    }
    if all(e.patch_labels is not None for e in examples):
        batch["patch_labels"] = torch.from_numpy(np.concatenate([e.patch_labels for e in examples]))
    return batch
