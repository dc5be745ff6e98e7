"""A plain greedy generation loop over a bundle: numpy + onnxruntime + tokenizers only, no torch.

It is the executable reading of DESIGN.md's graph contract (host embedding, host positions, left padding; KV
returned as new entries only (BSHD decoders) or as past + new (BNSH decoders fed their past only, not a shared
buffer)) that parity tests compare with transformers. Deliberately simple: the KV cache is concatenated each step;
the runtime's preallocated, shared cache is the runtime's business.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omniad_edge.positions import batch_rope_positions
from omniad_edge.preprocess import concat_images, preprocess_image


@dataclass
class Prompt:
    input_ids: np.ndarray  # (S,) int64
    images: list  # PreprocessedImage per image, in prompt order


@dataclass
class Generation:
    tokens: list[list[int]]  # per sequence, up to and including eos
    logits: list[np.ndarray]  # per step (B, V) float32


def ort_session(path, threads: int = 2):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # shared 2-core machines
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class BundleRunner:
    def __init__(self, bundle_dir):
        from tokenizers import Tokenizer

        self.dir = Path(bundle_dir)
        self.manifest = json.loads((self.dir / "manifest.json").read_text())
        m = self.manifest
        self.vision = ort_session(self.dir / m["graphs"]["vision"]["path"])
        self.decoder = ort_session(self.dir / m["graphs"]["decoder"]["path"])
        self.embed = np.load(self.dir / m["embed_tokens"]["path"], mmap_mode="r", allow_pickle=False)
        self.tokenizer = Tokenizer.from_file(str(self.dir / m["tokenizer"]["path"]))
        self.tokens = m["tokens"]
        self.vcfg = m["model"]["vision"]
        self.bnsh = m["graphs"]["decoder"].get("kv_layout", "BSHD") == "BNSH"

    # --- prompt -----------------------------------------------------------------------------------------
    def prompt(self, frames: list[np.ndarray], text: str | None = None) -> Prompt:
        """Manifest templates: query intro, each image, then the detect instruction (or `text`)."""
        p = self.manifest["prompt"]
        merge = self.manifest["preprocess"]["merge_size"]
        images = [preprocess_image(f, self.manifest["preprocess"]) for f in frames]
        pads = [self.tokenizer.id_to_token(self.tokens["image_pad"]) * (int(np.prod(im.grid_thw)) // merge ** 2)
                for im in images]
        content = p["query_intro"] + "".join(p["image"].format(image_pads=x) for x in pads) + (text or p["detect"])
        ids = self.tokenizer.encode(p["template"].format(system=p["system"], content=content),
                                    add_special_tokens=False).ids
        return Prompt(np.asarray(ids, dtype=np.int64), images)

    # --- graphs -----------------------------------------------------------------------------------------
    def image_embeds(self, images) -> np.ndarray:
        inputs = concat_images(images, self.vcfg["spatial_merge_size"], self.vcfg["window_size"],
                               self.vcfg["patch_size"])
        return self.vision.run(["image_embeds"], {i.name: inputs[i.name] for i in self.vision.get_inputs()})[0]

    def embed_prompt(self, prompt: Prompt) -> np.ndarray:
        x = np.asarray(self.embed[prompt.input_ids], dtype=np.float32)
        if prompt.images:
            mask = prompt.input_ids == self.tokens["image_pad"]
            feats = self.image_embeds(prompt.images)
            assert feats.shape[0] == mask.sum(), (feats.shape, mask.sum())
            x[mask] = feats
        return x

    def step(self, embeds, positions, attention_mask, cache):
        layers = self.manifest["model"]["num_layers"]
        feeds = {"inputs_embeds": embeds, "position_ids": positions, "attention_mask": attention_mask}
        for i in range(layers):
            feeds[f"past_key.{i}"], feeds[f"past_value.{i}"] = cache[i]
        out = self.decoder.run(None, feeds)
        names = [o.name for o in self.decoder.get_outputs()]
        res = dict(zip(names, out))
        if self.bnsh:  # present = past + new, written by the graph
            return res["logits"], [(res[f"present_key.{i}"], res[f"present_value.{i}"]) for i in range(layers)]
        new = [(np.concatenate([cache[i][0], res[f"new_key.{i}"]], axis=1),
                np.concatenate([cache[i][1], res[f"new_value.{i}"]], axis=1)) for i in range(layers)]
        return res["logits"], new

    # --- greedy loop ------------------------------------------------------------------------------------
    def generate(self, prompts: list[Prompt], max_new_tokens: int = 16) -> Generation:
        m = self.manifest["model"]
        batch = len(prompts)
        positions, mask, deltas = batch_rope_positions(
            [p.input_ids for p in prompts], [[im.grid_thw for im in p.images] for p in prompts], self.tokens,
            self.vcfg["spatial_merge_size"])
        width = mask.shape[1]
        embeds = np.zeros((batch, width, m["hidden_size"]), dtype=np.float32)
        for b, p in enumerate(prompts):
            embeds[b, width - len(p.input_ids):] = self.embed_prompt(p)
            embeds[b, :width - len(p.input_ids)] = self.embed[self.tokens["pad"]]
        kv, hd = m["num_key_value_heads"], m["head_dim"]
        empty = np.zeros((batch, kv, 0, hd) if self.bnsh else (batch, 0, kv, hd), dtype=np.float32)
        cache = [(empty, empty)] * m["num_layers"]
        steps = np.array([len(p.input_ids) for p in prompts], dtype=np.int64)
        eos = set(self.tokens["eos"])
        tokens: list[list[int]] = [[] for _ in prompts]
        done = [False] * batch
        all_logits = []
        logits, cache = self.step(embeds, positions, mask, cache)
        for _ in range(max_new_tokens):
            all_logits.append(logits)
            next_ids = logits.argmax(-1)
            for b in range(batch):
                if not done[b]:
                    tokens[b].append(int(next_ids[b]))
                    done[b] = int(next_ids[b]) in eos
            if all(done):
                break
            next_ids = np.where(done, self.tokens["pad"], next_ids)
            pos = np.broadcast_to((steps + deltas)[None, :, None], (3, batch, 1)).astype(np.int64)
            mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
            logits, cache = self.step(np.asarray(self.embed[next_ids], dtype=np.float32)[:, None, :], pos, mask,
                                      cache)
            steps += 1
        return Generation(tokens, all_logits)
