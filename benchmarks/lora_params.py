"""Parameter counts of training/lora.py's adapters on the published Qwen2-VL-2B, Qwen2.5-VL-3B and Qwen2.5-VL-7B
shapes, and the bytes their weights take: counted on models built on torch's meta device (no weights, no download).

    python benchmarks/lora_params.py [--out benchmarks/results/lora-params.md]

Counts, not measurements of a run: activation memory depends on the image tokens and the GPU's kernels and is not
measured here (no GPU).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

# text and vision shapes of the published configs (Qwen2.5-VL-3B and Qwen2-VL-2B as in trt_memory_table.py)
SHAPES = {
    "Qwen2-VL-2B": ("qwen2_vl", dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                                     num_attention_heads=12, num_key_value_heads=2, vocab_size=151936),
                    dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4), True),
    "Qwen2.5-VL-3B": ("qwen2_5_vl", dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                                         num_attention_heads=16, num_key_value_heads=2, vocab_size=151936),
                      dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                           fullatt_block_indexes=[7, 15, 23, 31], window_size=112), True),
    "Qwen2.5-VL-7B": ("qwen2_5_vl", dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                         num_attention_heads=28, num_key_value_heads=4, vocab_size=152064),
                      dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                           fullatt_block_indexes=[7, 15, 23, 31], window_size=112), False),
}


def counts(architecture: str, text: dict, vision: dict, tie: bool, rank: int) -> dict:
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    from training.lora import TEXT_MODULES, VISION_MODULES

    config_cls, model_cls = {"qwen2_5_vl": ("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration"),
                             "qwen2_vl": ("Qwen2VLConfig", "Qwen2VLForConditionalGeneration")}[architecture]
    config = getattr(transformers, config_cls)(text_config=text, vision_config=vision, tie_word_embeddings=tie)
    out = {}
    for name, targets in (("text", TEXT_MODULES), ("text+vision", f"{TEXT_MODULES}|{VISION_MODULES}")):
        with torch.device("meta"):
            model = getattr(transformers, model_cls)(config)
        peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets))
        trainable, total = peft_model.get_nb_trainable_parameters()
        out[name] = trainable
        out["total"] = total - trainable
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    lines = [f"# LoRA adapter sizes (rank {args.rank}, training/lora.py's target modules)", "",
             f"`python benchmarks/lora_params.py`: models built on torch's meta device from the published shapes; "
             f"counts, not a run (load average {tuple(round(x, 2) for x in os.getloadavg())}, irrelevant to counts).",
             "", "| model | parameters | bf16 weights GB | LoRA text | share | LoRA text + vision | adapter + grad + "
             "AdamW fp32 GB (text) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, (arch, text, vision, tie) in SHAPES.items():
        c = counts(arch, text, vision, tie, args.rank)
        lines.append(f"| {name} | {c['total'] / 1e9:.2f} B | {c['total'] * 2 / 1e9:.1f} | {c['text'] / 1e6:.1f} M | "
                     f"{100 * c['text'] / c['total']:.2f}% | {c['text+vision'] / 1e6:.1f} M | "
                     f"{c['text'] * 16 / 1e9:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
