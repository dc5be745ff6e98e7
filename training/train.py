"""SFT of the reference model on synthetic frames (teacher forcing, loss on the assistant turn only).

    nice -n 10 python -m training.train --out runs/ref --steps 3000            # fresh run
    nice -n 10 python -m training.train --out runs/ref --steps 3000 --resume   # continue after a stop

Every frame is generated from its seed on the fly (step s uses train frames s*B .. s*B+B-1), so a resumed run sees
exactly the data it would have seen without the stop. A checkpoint (weights + optimizer + step) is written every
--ckpt-minutes, together with a Hugging Face folder OUT/hf that the exporter takes (`python -m export OUT/hf ...`).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

from . import spec as S
from .data import Encoder, collate, training_frame

TRAINING_DIR = Path(__file__).resolve().parent


def _log(out: Path, record: dict) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    with open(out / "log.jsonl", "a", encoding="utf-8") as f:
        f.write(line + "\n")


def prepare_tokenizer(out: Path, samples: int, source: Path | None = None) -> Path:
    """OUT/tokenizer/tokenizer.json, built once per run directory (or copied from the run `source`) and reused on
    resume."""
    from . import tokenizer as T

    path = out / "tokenizer" / "tokenizer.json"
    if not path.is_file():
        if source is None:
            T.main([str(path.parent), "--samples", str(samples)])
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source / "tokenizer" / "tokenizer.json", path)
    return path


def save_hf(model, out_dir: Path, tokenizer_path: Path, spec: dict, preprocess: dict | None = None,
            chat_template: Path | None = TRAINING_DIR / "chat_template.jinja") -> None:
    """A Hugging Face checkpoint folder the exporter reads: weights, config, tokenizer, chat template, preprocessor
    config and the output spec. preprocess: a manifest's preprocess section (default: the reference model's)."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    shutil.copy(tokenizer_path, tmp / "tokenizer.json")
    if chat_template is not None:
        shutil.copy(chat_template, tmp / "chat_template.jinja")
    (tmp / "output_spec.json").write_text(json.dumps(spec, indent=1) + "\n", encoding="utf-8")
    p = preprocess or S.PREPROCESS
    (tmp / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Qwen2VLImageProcessor", "do_resize": True, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": p["mean"], "image_std": p["std"],
        "min_pixels": p["min_pixels"], "max_pixels": p["max_pixels"],
        "size": {"shortest_edge": p["min_pixels"], "longest_edge": p["max_pixels"]},
        "patch_size": p["patch_size"], "merge_size": p["merge_size"], "temporal_patch_size": p["temporal_patch_size"],
        "resample": {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3}[p.get("resample", "bicubic")]},
        indent=2), encoding="utf-8")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)


def lr_at(step: int, progress: float, peak: float, warmup: int) -> float:
    """Linear warmup over `warmup` steps, then cosine to 5% of peak as progress goes 0 -> 1."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, max(0.0, progress))
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


class Objective:
    """The SFT loss: token cross-entropy on the assistant turn, mask tokens (after <seg> up to </seg>) weighted
    `mask_weight` times the others, plus an auxiliary dense loss: a linear head on the merged image tokens (captured by
    a hook) predicts each patch's defect label. One label per patch is far more signal per frame than the first mask
    token alone; the head is training-only and never exported."""

    def __init__(self, model, encoder: Encoder, spec: dict, aux_weight: float = 1.0, aux_pos_weight: float = 5.0,
                 mask_weight: float = 3.0):
        import torch

        self.torch, self.model = torch, model
        self.aux_weight, self.mask_weight = aux_weight, mask_weight
        self.n_labels = len(spec["output"]["mask"]["labels"])
        merge = model.config.vision_config.spatial_merge_size
        self.aux = torch.nn.Linear(model.config.vision_config.out_hidden_size, merge * merge * self.n_labels)
        self.captured: dict = {}
        model.model.visual.register_forward_hook(
            lambda mod, inp, out: self.captured.__setitem__("merged", out.pooler_output))
        self.seg_open = encoder.tokenizer.token_to_id(spec["output"]["tags"]["mask"][0])
        self.seg_close = encoder.tokenizer.token_to_id(spec["output"]["tags"]["mask"][1])
        self.class_weight = torch.ones(self.n_labels)
        self.class_weight[1:] = aux_pos_weight

    def parameters(self) -> list:
        return list(self.model.parameters()) + list(self.aux.parameters())

    def _in_mask(self, gold):
        """1.0 on the target tokens from just after <seg> through </seg>."""
        torch = self.torch
        opened = torch.cumsum((gold == self.seg_open).long(), dim=1)
        closed = torch.cumsum((gold == self.seg_close).long(), dim=1) - (gold == self.seg_close).long()
        return ((opened - closed) > 0).float() * (gold != self.seg_open).float()

    def __call__(self, batch: dict):
        """(total loss, token loss, dense loss) of a collated batch (its labels and patch labels are popped)."""
        F = self.torch.nn.functional
        dense = batch.pop("patch_labels")
        labels = batch.pop("labels")
        logits = self.model(**batch).logits[:, :-1].float()
        gold = labels[:, 1:]
        token_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), gold.reshape(-1), ignore_index=-100,
                                     reduction="none").view(gold.shape)
        weight = (gold != -100).float() * (1.0 + (self.mask_weight - 1.0) * self._in_mask(gold))
        lm_loss = (token_loss * weight).sum() / weight.sum()
        aux_logits = self.aux(self.captured.pop("merged")).view(-1, self.n_labels)
        aux_loss = F.cross_entropy(aux_logits, dense.view(-1), weight=self.class_weight)
        return lm_loss + self.aux_weight * aux_loss, lm_loss, aux_loss


def batch_examples(encoder: Encoder, split: str, start: int, n: int, size: int, vary: bool = True):
    return [encoder.sample(*training_frame(split, i, size, vary)) for i in range(start, start + n)]


def main(argv=None):
    ap = argparse.ArgumentParser(description="SFT of the omniad_edge reference model on synthetic defects")
    ap.add_argument("--out", type=Path, default=Path("runs/ref"))
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--size", type=int, default=224, help="frame side in pixels")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ckpt-minutes", type=float, default=5.0)
    ap.add_argument("--max-minutes", type=float, default=0.0,
                    help="training time budget (resumes included); the LR schedule follows whichever of steps and "
                         "time runs out first, so a slow shared machine still ends with a decayed LR; 0: steps only")
    ap.add_argument("--val-every", type=int, default=250)
    ap.add_argument("--tokenizer-samples", type=int, default=3000)
    ap.add_argument("--aux-weight", type=float, default=1.0,
                    help="weight of the auxiliary dense loss: a linear head on the merger output predicts each "
                         "patch's defect label (training only; not part of the model or the bundle)")
    ap.add_argument("--aux-pos-weight", type=float, default=5.0,
                    help="class weight of defect patches in the dense loss (they are ~2%% of the patches)")
    ap.add_argument("--mask-weight", type=float, default=3.0,
                    help="loss weight of the mask tokens (after <seg> up to </seg>) relative to the other target "
                         "tokens: they carry what the image shows, the rest follows from them")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init-from", type=Path, default=None,
                    help="another run directory: start from its weights and tokenizer (fresh optimizer, step 0); "
                         "for a changed configuration that keeps the parameter shapes, e.g. the rope")
    ap.add_argument("--first-frame", type=int, default=0,
                    help="index of the first train frame (step s uses frames FIRST + s*B ..); with --init-from, "
                         "set it past the frames the earlier run saw")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch

    from .model import make_model

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    spec = S.load_spec()
    tok_path = prepare_tokenizer(args.out, args.tokenizer_samples, args.init_from)
    encoder = Encoder(tok_path, spec)
    model = make_model(encoder.tokenizer.backend, seed=args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    objective = Objective(model, encoder, spec, args.aux_weight, args.aux_pos_weight, args.mask_weight)
    aux = objective.aux
    aux_opt = torch.optim.AdamW(aux.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    step, elapsed = 0, 0.0
    state_path = args.out / "ckpt" / "state.pt"
    if args.resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, elapsed = int(state["step"]), float(state.get("elapsed_s", 0.0))
        if "aux" in state:
            aux.load_state_dict(state["aux"])
            aux_opt.load_state_dict(state["aux_optimizer"])
        _log(args.out, {"event": "resume", "step": step})
    else:
        if args.resume:
            _log(args.out, {"event": "resume", "step": 0, "note": f"no checkpoint at {state_path}; starting fresh"})
        else:
            (args.out / "log.jsonl").unlink(missing_ok=True)
        if args.init_from:
            init = torch.load(args.init_from / "ckpt" / "state.pt", map_location="cpu", weights_only=True)
            model.load_state_dict(init["model"])
            aux.load_state_dict(init["aux"])
            _log(args.out, {"event": "init", "from": str(args.init_from), "its_step": int(init["step"])})
    _log(args.out, {"event": "start", "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
                    **{k: str(v) for k, v in vars(args).items()}})

    def checkpoint():
        state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = state_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                    "elapsed_s": spent(), "aux": aux.state_dict(), "aux_optimizer": aux_opt.state_dict()}, tmp)
        os.replace(tmp, state_path)
        save_hf(model, args.out / "hf", tok_path, spec)
        _log(args.out, {"event": "checkpoint", "step": step})

    pad, image_pad = encoder.tokens["pad"], encoder.tokens["image_pad"]
    val = collate(batch_examples(encoder, "val", 0, 32, args.size), pad, image_pad)
    t_start = last_ckpt = time.monotonic()
    t_log, losses = time.monotonic(), []

    def spent() -> float:
        return elapsed + time.monotonic() - t_start

    def progress() -> float:
        p = step / args.steps
        return max(p, spent() / (args.max_minutes * 60)) if args.max_minutes else p

    model.train()
    while progress() < 1.0:
        first = args.first_frame + step * args.batch
        batch = collate(batch_examples(encoder, "train", first, args.batch, args.size), pad, image_pad)
        for g in opt.param_groups + aux_opt.param_groups:
            g["lr"] = lr_at(step, progress(), args.lr, args.warmup)
        loss, lm_loss, aux_loss = objective(batch)
        opt.zero_grad(set_to_none=True)
        aux_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(objective.parameters(), 1.0)
        opt.step()
        aux_opt.step()
        step += 1
        losses.append((lm_loss.item(), aux_loss.item()))
        if step % 10 == 0:
            now = time.monotonic()
            lm, dn = np.mean(losses, axis=0)
            _log(args.out, {"step": step, "loss": round(float(lm), 4), "aux_loss": round(float(dn), 4),
                            "lr": round(opt.param_groups[0]["lr"], 6),
                            "s_per_step": round((now - t_log) / len(losses), 3)})
            t_log, losses = now, []
        done = progress() >= 1.0
        if step % args.val_every == 0 or done:
            model.eval()
            with torch.no_grad():
                out = model(**{k: v for k, v in val.items() if k != "patch_labels"})
                objective.captured.clear()
                pred = out.logits[:, :-1].argmax(-1)
                gold = val["labels"][:, 1:]
                keep = gold != -100
                acc = float((pred[keep] == gold[keep]).float().mean())
            model.train()
            _log(args.out, {"step": step, "val_loss": round(float(out.loss), 4), "val_token_acc": round(acc, 4)})
        now = time.monotonic()
        if now - last_ckpt > args.ckpt_minutes * 60 or done:
            checkpoint()
            last_ckpt = now
    _log(args.out, {"event": "done", "step": step, "minutes": round(spent() / 60, 1)})


if __name__ == "__main__":
    main()
