"""training/lora.py end to end on a tiny random Qwen2.5-VL, on the CPU: a few LoRA steps lower the loss, the merged
checkpoint loads as a plain model, exports with `export_bundle`, and its bundle runs through Inspector and writes what
transformers writes with the merged weights.

Needs the `train` extra (peft); without it the end-to-end test skips, saying so.
"""
import importlib.util
import json
import sys

import pytest

from omniad_edge.errors import OmniADError

NO_PEFT = importlib.util.find_spec("peft") is None

# short prompts keep the sequences (and the test) small; the output grammar is the judo preset's
SHORT_PROMPT = {"prompt": {"system": "Inspect parts.", "detect": "Mask, reason, answer."}}


def _loss(model, batch) -> float:
    import torch

    with torch.no_grad():
        return float(model(**batch).loss)


def test_without_peft_the_error_names_the_extra(monkeypatch, tmp_path):
    from training import lora as L

    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now raises ImportError
    with pytest.raises(OmniADError, match=r"needs the `train` extra: pip install \"omniad-edge\[train\]\""):
        L.finetune(tmp_path / "data", tmp_path / "base", tmp_path / "run")


@pytest.mark.skipif(NO_PEFT, reason="peft is not installed: pip install -e \".[train]\" (the `train` extra)")
def test_lora_loss_falls_and_the_merged_checkpoint_exports_and_runs(tiny_checkpoint, tmp_path):
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from export import export_bundle
    from omniad_edge import Inspector
    from training import hf_data as H
    from training import lora as L

    torch.manual_seed(0)
    (tmp_path / "spec.json").write_text(json.dumps(SHORT_PROMPT))
    spec = H.resolve_spec("judo", tmp_path / "spec.json")
    samples = list(H.synthetic_samples(4, size=56))
    assert sum(s.anomalous for s in samples) >= 1 and not all(s.anomalous for s in samples)
    H.write_dataset(samples, tmp_path / "data", spec, eval_fraction=0.0)
    records = H.load_records(tmp_path / "data")

    opts = L.LoraOptions(rank=8, alpha=16, dropout=0.0, learning_rate=1e-2, max_steps=12, batch_size=4,
                         grad_accum=1, warmup=0.0, max_image_tokens=16, logging_steps=1, save_steps=10_000,
                         quiet=True)
    collator = H.ChatCollator(tiny_checkpoint, spec, opts.max_image_tokens)
    batch = collator(records)
    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_checkpoint, attn_implementation="sdpa").eval()
    before = _loss(base, batch)

    result = L.finetune(tmp_path / "data", tiny_checkpoint, tmp_path / "run", opts)

    assert 0 < result.trainable_parameters < 0.2 * result.total_parameters
    assert len(result.losses) == opts.max_steps and result.losses[-1] < result.losses[0]
    # the merged folder is a plain checkpoint (no peft modules) whose loss on the training batch fell far below the
    # base model's: the random model starts near ln(320) = 5.8 nats per target token and these 12 steps take it to
    # about 4.0 (measured); the loss of a fixed batch is deterministic, and 1 nat (2.7x the probability of every
    # target token) is no rounding effect
    merged = Qwen2_5_VLForConditionalGeneration.from_pretrained(result.merged, attn_implementation="sdpa").eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    after = _loss(merged, batch)
    assert after < before - 1.0, (before, after)
    preprocessor = json.loads((result.merged / "preprocessor_config.json").read_text())
    assert preprocessor["max_pixels"] == collator.preprocess["max_pixels"]

    bundle = export_bundle(result.merged, tmp_path / "bundle", output_spec=result.merged / L.SPEC_IN_CHECKPOINT,
                           max_image_tokens=opts.max_image_tokens, quiet=True)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["output"] == spec["output"] and manifest["prompt"] == spec["prompt"]
    assert manifest["preprocess"]["max_pixels"] == collator.preprocess["max_pixels"]

    # the bundle writes, token for token, what transformers' greedy generate writes with the merged weights, and
    # that is not what the base model writes: the adapters went through merge and export
    prompt_len = collator.example(records[0]).prompt_len
    one = {k: v[:, :prompt_len] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v
           for k, v in collator(records[:1]).items() if k != "labels"}
    n_new = 8
    expected = {}
    for name, model in (("base", base), ("merged", merged)):
        with torch.no_grad():
            out = model.generate(**one, max_new_tokens=n_new, do_sample=False)
        expected[name] = collator.tokenizer.decode(out[0, prompt_len:].tolist())
    assert expected["merged"] != expected["base"]
    with Inspector(bundle, mode="explain", max_new_tokens=n_new) as inspector:
        inspection = inspector.run(samples[0].image)
    assert inspection.text == expected["merged"], expected
    assert 0.0 <= inspection.score <= 1.0 and isinstance(inspection.is_anomalous, bool)
