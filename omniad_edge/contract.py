"""What export/, the runtime, the TensorRT package and training/ agree on (docs/DESIGN.md spells it out):

- the bundle format and the manifest keys the runtime relies on;
- the graph I/O names of the vision and decoder graphs;
- the output's tagged blocks (`<seg>...</seg><think>...</think><answer>...</answer>` in the reference model) and the
  one function that splits generated text into them.

Constants and pure functions only; this module imports nothing from the package, so anything may import it.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

__all__ = ["BUNDLE_FORMAT", "BUNDLE_FORMAT_VERSION", "MANIFEST", "MANIFEST_KEYS", "VISION_INPUTS",
           "GROUPED_VISION_INPUTS", "vision_input_names", "VISION_OUTPUT", "DECODER_INPUTS", "LOGITS", "DRAFT_LOGITS",
           "draft_problem", "past_names", "new_names", "present_names", "decoder_input_names", "decoder_output_names",
           "TARGETS", "bundle_target", "KV_LAYOUTS", "decoder_kv_layout", "REFINE_INPUT", "REFINE_OUTPUT",
           "OUTPUT_SECTIONS", "output_blocks", "MAX_ASPECT"]

# Qwen2-VL / Qwen2.5-VL image processors refuse frames with an aspect ratio above this; frame.py, preprocess.py and
# the TensorRT vision profile (the most windows a frame can span) all rely on it.
MAX_ASPECT = 200

# -- the bundle -------------------------------------------------------------------------------------------------
BUNDLE_FORMAT = "omniad-edge-bundle"
BUNDLE_FORMAT_VERSION = 1  # what export writes; the runtime reads every version in bundle.FORMAT_VERSIONS
MANIFEST = "manifest.json"

# Top-level manifest keys and, inside each, the keys the runtime relies on (None: any value).
MANIFEST_KEYS: Mapping[str, tuple[str, ...] | None] = {
    "format": None,
    "format_version": None,
    "name": None,
    "model": ("hidden_size", "num_layers", "num_key_value_heads", "head_dim", "vocab_size", "vision"),
    "tokens": ("image_pad", "vision_start", "vision_end", "eos", "pad"),
    "preprocess": ("patch_size", "merge_size", "temporal_patch_size", "min_pixels", "max_pixels", "mean", "std"),
    "prompt": ("template", "image", "system", "detect", "reference_intro", "query_intro"),
    "output": ("order", "tags", "mask"),
    "graphs": ("vision", "decoder"),
    "files": None,
    "embed_tokens": ("path", "dtype", "shape"),
    "tokenizer": ("path",),
}

# Optional top-level key: the runtime the graphs were exported for (export --target). "ort": ONNX Runtime's fused
# contrib ops (GroupQueryAttention decoder, fused vision attention); "tensorrt": standard ONNX ops only. Bundles
# written before the key existed have none: their decoder is the plain BSHD one.
TARGETS = ("ort", "tensorrt")


def bundle_target(manifest: Mapping) -> str | None:
    """The manifest's target, None for bundles exported before targets existed."""
    return manifest.get("target")


# -- graph I/O ----------------------------------------------------------------------------------------------------
# Vision: every index array is computed on the host (preprocess.vision_indices), so one graph serves every size.
# Graphs exported before the grouped attention (dense segment masks):
VISION_INPUTS = ("pixel_values", "rotary_pos_ids", "window_index", "reverse_window_index", "window_segments",
                 "image_segments")
# Grouped attention (the manifest's graphs.vision.attention says so); Qwen2-VL has no window inputs:
GROUPED_VISION_INPUTS = ("pixel_values", "rotary_pos_ids", "image_gather", "image_scatter", "window_gather",
                         "window_scatter")
VISION_OUTPUT = "image_embeds"


def vision_input_names(manifest: Mapping) -> tuple[str, ...]:
    """The vision graph's inputs: grouped-attention graphs say so in the manifest, older ones do not."""
    if "attention" not in manifest["graphs"]["vision"]:
        return VISION_INPUTS
    return GROUPED_VISION_INPUTS if manifest["model"]["vision"].get("window_size") else GROUPED_VISION_INPUTS[:4]


# Decoder: inputs_embeds, 3-D mrope position_ids, attention_mask, then the past K/V per layer; outputs the last
# position's logits and K/V per layer. graphs.decoder.kv_layout names the form (DESIGN.md, decoder graph):
# "BSHD": past (B, P, KV, hd) holds the valid past only; outputs new_key/new_value (B, S, KV, hd), the new entries.
# "BNSH": past (B, KV, M, hd) is the whole cache buffer of capacity M; outputs present_key/present_value bound to the
#         same buffer, which the graph (GroupQueryAttention) updates in place at slots [T - S, T).
DECODER_INPUTS = ("inputs_embeds", "position_ids", "attention_mask")
LOGITS = "logits"
# Optional last output (graphs.decoder.draft_logits = D): the logits of up to D positions before the last, so a run that
# feeds a token and D drafted ones can check every draft (generate.py, speculative decoding); empty for one-token steps.
DRAFT_LOGITS = "draft_logits"
KV_LAYOUTS = ("BSHD", "BNSH")


def draft_problem(draft: np.ndarray, batch: int, tokens: int, positions: int, vocab: int) -> str | None:
    """What is wrong with the draft buffer of a run that checks drafted tokens (`forward(..., draft)`; None: nothing):
    it must be (batch, tokens - 1, vocab) float32, writeable and C-contiguous, for a run of 2..positions + 1 tokens
    (positions: the decoder's graphs.decoder.draft_logits)."""
    if not 2 <= tokens <= positions + 1:
        return (f"draft logits need a run of 2..{positions + 1} tokens (this decoder returns up to {positions} draft "
                f"positions), got {tokens}")
    if (draft.shape != (batch, tokens - 1, vocab) or draft.dtype != np.float32 or not draft.flags.c_contiguous
            or not draft.flags.writeable):
        return (f"draft must be a writeable C-contiguous float32 array of shape {(batch, tokens - 1, vocab)}, got "
                f"{draft.dtype} {draft.shape}")
    return None


def decoder_kv_layout(manifest: Mapping) -> str:
    return manifest["graphs"]["decoder"].get("kv_layout", "BSHD")


def past_names(layer: int) -> tuple[str, str]:
    """(past key, past value) input names of one decoder layer."""
    return f"past_key.{layer}", f"past_value.{layer}"


def new_names(layer: int) -> tuple[str, str]:
    """(new key, new value) output names of one decoder layer."""
    return f"new_key.{layer}", f"new_value.{layer}"


def present_names(layer: int) -> tuple[str, str]:
    """(present key, present value) output names of one layer of a BNSH decoder (the updated cache buffers)."""
    return f"present_key.{layer}", f"present_value.{layer}"


def decoder_input_names(num_layers: int) -> list[str]:
    """All decoder inputs in graph order: DECODER_INPUTS, then past key and value of layer 0, 1, ..."""
    return [*DECODER_INPUTS, *(name for i in range(num_layers) for name in past_names(i))]


def decoder_output_names(num_layers: int, kv_layout: str = "BSHD", draft: bool = False) -> list[str]:
    """All decoder outputs in graph order: logits, then new (BSHD) or present (BNSH) key and value of layer 0, 1, ...,
    then draft_logits when the graph has it (manifest graphs.decoder.draft_logits)."""
    names = present_names if kv_layout == "BNSH" else new_names
    return [LOGITS, *(name for i in range(num_layers) for name in names(i))] + ([DRAFT_LOGITS] if draft else [])


# Refine (optional, graphs.refine): the frame and the coarse mask -> pixel logits (omniad_edge/refine.py).
REFINE_INPUT = "image"  # float32 (1, 4, h, w): RGB / 255 - 0.5, then the coarse mask upsampled to (h, w)
REFINE_OUTPUT = "logits"  # float32 (1, 1, h, w)


# -- the output's tagged blocks ------------------------------------------------------------------------------------
OUTPUT_SECTIONS = ("mask", "explanation", "answer")  # the blocks a manifest's output.order may list


def output_blocks(text: str, tags: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Contents of each tagged block of generated text, by block name (tags: the manifest's output.tags).

    A block is found by its first opening tag; an unterminated block runs to the end of the text (generation may
    stop inside it), and a block whose opening tag never appears is absent from the result.
    """
    out = {}
    for name, (open_tag, close_tag) in tags.items():
        start = text.find(open_tag)
        if start < 0:
            continue
        start += len(open_tag)
        end = text.find(close_tag, start)
        out[name] = text[start:] if end < 0 else text[start:end]
    return out
