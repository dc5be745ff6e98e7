"""LoRA fine-tuning of a Qwen2-VL / Qwen2.5-VL checkpoint on a chat data set (training/hf_data.py), ending in a
merged checkpoint folder that `python -m export` takes. Recipe and expectations: docs/FINETUNE.md.

    python -m training.lora DATA BASE_CHECKPOINT RUN [--epochs 3] [--rank 16] [--max-image-tokens 1280]
    python -m export RUN/merged BUNDLE --output-spec RUN/merged/omniad_output_spec.json --max-image-tokens 1280

RUN/trainer holds the Trainer's checkpoints (`--resume` continues from the last), RUN/adapter the LoRA adapter,
RUN/merged the base weights with the adapter folded in (same architecture and tokenizer: nothing of peft is left).

Why peft: low-rank adapters on the decoder's projections train under 1% of the parameters (0.49-0.84% at rank 16
for 2B-7B, benchmarks/results/lora-params.md), so a 7B model fine-tunes on one workstation GPU with the frozen weights
in bf16 and no optimizer state for them, and `merge_and_unload` folds the adapters back into plain Linear weights;
writing adapter injection and merging by hand would repeat what peft already does for these architectures.
transformers' Trainer runs the loop (accumulation, bf16, gradient checkpointing, checkpoints and resume).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from omniad_edge.errors import OmniADError

__all__ = ["LoraOptions", "TrainResult", "finetune", "merge", "TEXT_MODULES", "VISION_MODULES"]

# full-match regexes over module names (transformers 5 layout); the vision tower's MLP is gate/up/down in
# Qwen2.5-VL and fc1/fc2 in Qwen2-VL
TEXT_MODULES = r"model\.language_model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)"
VISION_MODULES = r"model\.visual\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(gate_proj|up_proj|down_proj|fc1|fc2))"
SPEC_IN_CHECKPOINT = "omniad_output_spec.json"
_MISSING = "LoRA fine-tuning needs the `train` extra: pip install \"omniad-edge[train]\" (torch, transformers, peft)"


@dataclass
class LoraOptions:
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    vision: bool = False  # also adapt the vision tower's attention and MLP (new surfaces look unlike the pretraining)
    learning_rate: float = 2e-4
    epochs: float = 3.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 1
    grad_accum: int = 8
    warmup: float = 0.03  # share of the steps
    max_image_tokens: int = 1280  # give export the same value
    precision: str = "auto"  # auto: bf16 on a GPU that has it, else fp32; or "bf16" | "fp32"
    gradient_checkpointing: bool | None = None  # None: on for a GPU
    logging_steps: int = 10
    save_steps: int = 200
    seed: int = 0
    resume: bool = False
    quiet: bool = False


@dataclass
class TrainResult:
    merged: Path
    adapter: Path
    losses: list[float] = field(default_factory=list)  # training loss at each logging step
    eval_losses: list[float] = field(default_factory=list)  # loss on eval.jsonl at each checkpoint
    trainable_parameters: int = 0
    total_parameters: int = 0


def _require():
    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise OmniADError(f"{_MISSING} ({exc})") from None


def _model_class(checkpoint):
    import transformers

    from export.checkpoint import ARCHITECTURES

    return getattr(transformers, ARCHITECTURES[checkpoint.architecture])


def _dtype(precision: str):
    import torch

    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    if precision not in ("bf16", "fp32"):
        raise OmniADError(f"precision must be 'auto', 'bf16' or 'fp32', got {precision!r}")
    return torch.bfloat16 if precision == "bf16" else torch.float32


def finetune(data_dir, base, run_dir, options: LoraOptions | None = None) -> TrainResult:
    """Train LoRA adapters on data_dir's train.jsonl, save them to RUN/adapter, merge into RUN/merged."""
    _require()
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from export.checkpoint import inspect_checkpoint

    from .hf_data import ChatCollator, load_records, load_spec

    opts = options or LoraOptions()
    run_dir = Path(run_dir)
    checkpoint = inspect_checkpoint(base)  # refuse what export would refuse before any training
    spec = load_spec(data_dir)
    records = load_records(data_dir, "train")
    held_out = load_records(data_dir, "eval")  # its loss is logged at every checkpoint
    collator = ChatCollator(base, spec, opts.max_image_tokens)
    dtype = _dtype(opts.precision)
    gpu = torch.cuda.is_available()
    checkpointing = gpu if opts.gradient_checkpointing is None else opts.gradient_checkpointing

    model = _model_class(checkpoint).from_pretrained(checkpoint.path, dtype=dtype, attn_implementation="sdpa")
    targets = f"{TEXT_MODULES}|{VISION_MODULES}" if opts.vision else TEXT_MODULES
    model = get_peft_model(model, LoraConfig(r=opts.rank, lora_alpha=opts.alpha, lora_dropout=opts.dropout,
                                             target_modules=targets, bias="none"))
    trainable, total = model.get_nb_trainable_parameters()
    if checkpointing:
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need a grad path
    args = TrainingArguments(
        output_dir=str(run_dir / "trainer"), per_device_train_batch_size=opts.batch_size,
        gradient_accumulation_steps=opts.grad_accum, learning_rate=opts.learning_rate,
        num_train_epochs=opts.epochs, max_steps=opts.max_steps, warmup_steps=opts.warmup,
        lr_scheduler_type="cosine", logging_steps=opts.logging_steps, save_steps=opts.save_steps,
        save_total_limit=2, bf16=dtype == torch.bfloat16, use_cpu=not gpu, seed=opts.seed,
        **({"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False}}
           if checkpointing else {}),
        remove_unused_columns=False, report_to="none", dataloader_num_workers=0, disable_tqdm=opts.quiet,
        **({"eval_strategy": "steps", "eval_steps": opts.save_steps, "per_device_eval_batch_size": opts.batch_size}
           if held_out else {}))
    trainer = Trainer(model=model, args=args, train_dataset=records, eval_dataset=held_out or None,
                      data_collator=collator)
    last = None
    if opts.resume:
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(str(run_dir / "trainer")) if (run_dir / "trainer").is_dir() else None
    trainer.train(resume_from_checkpoint=last)
    adapter = run_dir / "adapter"
    model.save_pretrained(adapter)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    eval_losses = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    del trainer, model
    merged = merge(base, adapter, run_dir / "merged", spec, collator.preprocess)
    return TrainResult(merged, adapter, losses, eval_losses, trainable, total)


def merge(base, adapter, out, spec: dict, preprocess: dict) -> Path:
    """Base weights (at their stored dtype) + adapter -> a plain checkpoint folder at `out`, written atomically:
    weights, config, the base's tokenizer, chat template and generation config, the preprocessor config bounded
    to the pixels the model trained on, and the output spec for export's --output-spec."""
    _require()
    from peft import PeftModel

    from export.checkpoint import inspect_checkpoint, read_json_object

    from .hf_data import staged, write_spec

    checkpoint = inspect_checkpoint(base)
    out = Path(out).absolute()
    with staged(out) as tmp:
        model = _model_class(checkpoint).from_pretrained(checkpoint.path, dtype="auto")
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        model.save_pretrained(tmp)
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_template.json",
                     "generation_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"):
            if (checkpoint.path / name).is_file():
                shutil.copyfile(checkpoint.path / name, tmp / name)
        pre = read_json_object(checkpoint.path / "preprocessor_config.json", "preprocessor_config") \
            if (checkpoint.path / "preprocessor_config.json").is_file() else {}
        bounds = {"min_pixels": preprocess["min_pixels"], "max_pixels": preprocess["max_pixels"]}
        pre.update(bounds, size={"shortest_edge": bounds["min_pixels"], "longest_edge": bounds["max_pixels"]})
        (tmp / "preprocessor_config.json").write_text(json.dumps(pre, indent=1) + "\n", encoding="utf-8")
        write_spec(tmp / SPEC_IN_CHECKPOINT, spec)
        inspect_checkpoint(tmp)  # what export will check first
    return out


def main(argv=None) -> int:
    d = LoraOptions()
    ap = argparse.ArgumentParser(prog="python -m training.lora",
                                 description="LoRA fine-tuning of a Qwen2-VL / Qwen2.5-VL checkpoint on a chat data "
                                             "set, merged into a checkpoint folder that `python -m export` takes.")
    ap.add_argument("data", type=Path, help="chat data set folder (python -m training.hf_data)")
    ap.add_argument("base", type=Path, help="Hugging Face Qwen2-VL / Qwen2.5-VL checkpoint folder")
    ap.add_argument("run", type=Path, help="run folder: trainer/ checkpoints, adapter/, merged/")
    ap.add_argument("--rank", type=int, default=d.rank, help=f"LoRA rank (default {d.rank})")
    ap.add_argument("--alpha", type=int, default=d.alpha, help=f"LoRA alpha; scale alpha/rank (default {d.alpha})")
    ap.add_argument("--dropout", type=float, default=d.dropout, help=f"LoRA dropout (default {d.dropout})")
    ap.add_argument("--vision", action="store_true", help="also put adapters on the vision tower")
    ap.add_argument("--learning-rate", type=float, default=d.learning_rate, help=f"peak (default {d.learning_rate})")
    ap.add_argument("--epochs", type=float, default=d.epochs, help=f"passes over train.jsonl (default {d.epochs})")
    ap.add_argument("--max-steps", type=int, default=d.max_steps, help="optimizer steps; overrides --epochs")
    ap.add_argument("--batch-size", type=int, default=d.batch_size, help=f"frames per step (default {d.batch_size})")
    ap.add_argument("--grad-accum", type=int, default=d.grad_accum,
                    help=f"batches per optimizer step (default {d.grad_accum})")
    ap.add_argument("--warmup", type=float, default=d.warmup, help=f"share of the steps (default {d.warmup})")
    ap.add_argument("--max-image-tokens", type=int, default=d.max_image_tokens,
                    help=f"image bound; give export the same (default {d.max_image_tokens})")
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default=d.precision,
                    help="auto: bf16 on a GPU that has it, else fp32")
    ap.add_argument("--gradient-checkpointing", choices=["auto", "on", "off"], default="auto",
                    help="auto: on for a GPU")
    ap.add_argument("--logging-steps", type=int, default=d.logging_steps)
    ap.add_argument("--save-steps", type=int, default=d.save_steps, help="checkpoint every N steps in RUN/trainer")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--resume", action="store_true", help="continue from the last checkpoint in RUN/trainer")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = vars(ap.parse_args(argv))
    data, base, run = args.pop("data"), args.pop("base"), args.pop("run")
    args["gradient_checkpointing"] = {"auto": None, "on": True, "off": False}[args["gradient_checkpointing"]]
    opts = LoraOptions(**args)
    try:
        result = finetune(data, base, run, opts)
    except OmniADError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"trained {result.trainable_parameters:,} of {result.total_parameters:,} parameters; loss "
          f"{result.losses[0]:.3f} -> {result.losses[-1]:.3f}" if result.losses else "no loss logged")
    if result.eval_losses:
        print(f"held-out loss at each checkpoint: {', '.join(f'{x:.3f}' for x in result.eval_losses)}")
    print(f"merged checkpoint: {result.merged}\nexport it with:\n  python -m export {result.merged} BUNDLE "
          f"--output-spec {result.merged / SPEC_IN_CHECKPOINT} --max-image-tokens {opts.max_image_tokens}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
