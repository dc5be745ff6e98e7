"""Drive onnxruntime-genai's generator loop over its own Qwen2.5-VL decoder with *our* prefill inputs.

onnxruntime-genai runs a Qwen2.5-VL model (type "qwen2_5_vl") as three sessions: vision, embedding, decoder. Its
builder (`exclude_embeds=true`) writes only the decoder, and genai's own vision pipeline expects a vision graph of
its own layout. To compare the decoder loop on exactly the same inputs, `wrap_genai_model` adds two small graphs:

- vision.onnx: a pass-through (image_features = pixel_values). We hand genai the image embeddings our vision graph
  computed, under the name pixel_values, so both runtimes prefill the same numbers and genai's vision time is zero
  (it is measured for omniad_edge and transformers only).
- embedding.onnx: the host embedding of DESIGN.md as a graph: Gather from the same embed_tokens table, then the
  image embeddings written over the image-pad rows (ScatterND), which is what omniad_edge does on the host.

genai computes the 3-D mrope positions itself from input_ids and image_grid_thw (IsQwenVLFamily), and runs its
fused decoder (GroupQueryAttention, MRotaryEmbedding) with its own KV cache and sampler. Identical greedy tokens to
transformers and omniad_edge are asserted by compare.py before any time is compared.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def wrap_genai_model(builder_dir, out_dir, embed_tokens_npy, *, image_pad: int, vision_start: int,
                     vision: dict) -> Path:
    """A genai model folder: the builder's decoder (hard links) + pass-through vision + table embedding graphs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    src, dst = Path(builder_dir), Path(out_dir)
    if (dst / "genai_config.json").is_file():
        return dst
    tmp = dst.with_name(dst.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name != "genai_config.json" and not (tmp / f.name).exists():
            try:
                os.link(f, tmp / f.name)
            except OSError:  # another filesystem: copy instead
                import shutil

                shutil.copyfile(f, tmp / f.name)

    table = np.load(embed_tokens_npy, mmap_mode="r", allow_pickle=False)
    hidden = int(table.shape[1])
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"])
    feats = helper.make_tensor_value_info("image_features", TensorProto.FLOAT, ["num_image_tokens", hidden])
    out = helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT,
                                        ["batch_size", "sequence_length", hidden])
    nodes = [helper.make_node("Gather", ["embed_table", "input_ids"], ["gathered"], axis=0),
             helper.make_node("Equal", ["input_ids", "image_pad"], ["is_pad"]),
             helper.make_node("NonZero", ["is_pad"], ["pad_at"]),
             helper.make_node("Transpose", ["pad_at"], ["pad_index"], perm=[1, 0]),
             helper.make_node("ScatterND", ["gathered", "pad_index", "image_features"], ["inputs_embeds"])]
    inits = [numpy_helper.from_array(np.ascontiguousarray(table, np.float32), "embed_table"),
             numpy_helper.from_array(np.array(image_pad, np.int64), "image_pad")]
    model = helper.make_model(helper.make_graph(nodes, "host_embedding", [ids, feats], [out], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(tmp / "embedding.onnx"), save_as_external_data=True,
                    location="embedding.onnx.data")

    pixels = helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["num_tokens", hidden])
    grid = helper.make_tensor_value_info("image_grid_thw", TensorProto.INT64, ["num_images", 3])
    feats_out = helper.make_tensor_value_info("image_features", TensorProto.FLOAT, ["num_tokens", hidden])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["pixel_values"], ["image_features"])],
                                                "vision_passthrough", [pixels, grid], [feats_out]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(tmp / "vision.onnx"))

    config = json.loads((src / "genai_config.json").read_text())
    config["model"]["embedding"] = {"filename": "embedding.onnx",
                                    "inputs": {"input_ids": "input_ids", "image_features": "image_features"},
                                    "outputs": {"inputs_embeds": "inputs_embeds"}}
    config["model"]["vision"] = {"filename": "vision.onnx", "spatial_merge_size": int(vision["spatial_merge_size"]),
                                 "patch_size": int(vision["patch_size"]), "window_size": int(vision["window_size"]),
                                 "tokens_per_second": int(vision.get("tokens_per_second", 2)),
                                 "inputs": {"pixel_values": "pixel_values", "image_grid_thw": "image_grid_thw"},
                                 "outputs": {"image_features": "image_features"}}
    config["model"]["image_token_id"] = int(image_pad)
    # genai finds images in the prompt by this token when it builds the 3-D positions; without it every position
    # is text-like and the greedy tokens differ from the first one
    config["model"]["vision_start_token_id"] = int(vision_start)
    (tmp / "genai_config.json").write_text(json.dumps(config, indent=1))
    os.replace(tmp, dst)
    return dst


def set_session_options(model_dir, threads: int | None, *, spinning: bool = False) -> None:
    """Give genai's sessions omniad_edge's thread settings: the same intra-op threads, one inter-op thread, and
    ONNX Runtime's thread spinning as omniad_edge sets it (off by default; on: between the ops of a run only,
    backends.onnxruntime.spin_entries). genai passes session_options keys it does not know to ONNX Runtime as
    session config entries, which is how spinning is set."""
    from omniad_edge.backends.onnxruntime import spin_entries

    path = Path(model_dir) / "genai_config.json"
    config = json.loads(path.read_text())
    for section in ("decoder", "embedding", "vision"):
        options = config["model"][section].setdefault("session_options", {})
        if threads:
            options["intra_op_num_threads"] = int(threads)
        else:
            options.pop("intra_op_num_threads", None)
        options["inter_op_num_threads"] = 1
        options.update(spin_entries(spinning))
        options.setdefault("log_id", "onnxruntime-genai")
        options.setdefault("provider_options", [])
    path.write_text(json.dumps(config, indent=1))


class GenaiRunner:
    """Greedy generation with onnxruntime-genai from prompt ids + image embeddings; per-step timings."""

    def __init__(self, model_dir):
        import onnxruntime_genai as og

        self.og = og
        self.model = og.Model(str(model_dir))

    def generate(self, prompt_ids: np.ndarray, image_embeds: np.ndarray, grid, max_new_tokens: int, stop=None):
        """(tokens, prefill ms, per-step ms list); step i = one generate_next_token + reading the token.

        stop(tokens) -> True ends generation after that token (checked outside the timed step)."""
        import time

        generator, prefill_ms = self._prefill(prompt_ids, image_embeds, grid, len(prompt_ids) + max_new_tokens)
        tokens, steps = [], []
        while len(tokens) < max_new_tokens and not generator.is_done():
            t = time.perf_counter()
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            steps.append((time.perf_counter() - t) * 1e3)
            tokens.append(token)
            if stop is not None and stop(tokens):
                break
        return tokens, prefill_ms, steps

    def _prefill(self, prompt_ids, image_embeds, grid, max_length):
        """A fresh generator with the image embeddings and the prompt appended; (generator, prefill ms)."""
        import time

        og = self.og
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=max_length, do_sample=False)
        generator = og.Generator(self.model, params)
        inputs = og.NamedTensors()
        inputs["pixel_values"] = np.ascontiguousarray(image_embeds, np.float32)
        inputs["image_grid_thw"] = np.asarray([grid], np.int64)
        inputs["num_image_tokens"] = np.asarray([image_embeds.shape[0]], np.int64)
        start = time.perf_counter()
        generator.set_inputs(inputs)
        generator.append_tokens(np.asarray(prompt_ids, np.int32))
        return generator, (time.perf_counter() - start) * 1e3

