"""Training samples as chat records for Hugging Face trainers, and the collator that turns records into inputs of
Qwen2VLForConditionalGeneration / Qwen2_5_VLForConditionalGeneration.

    python -m training.hf_data OUT --preset judo --normal GOOD_DIR [--defects MVTEC_DIR] --samples 2000
    python -m training.hf_data OUT --preset judo --synthetic 400   # the project's synthetic parts, to try the recipe

Both write train.jsonl, eval.jsonl, images/ and output_spec.json. From a part's own images (the data `omniad-edge
adapt` reads: a folder of good images, optionally an MVTec AD-layout set with real defects), the training records
are drawn by training/samples.py (good images, real defects, defects synthesised onto good images) and eval.jsonl
holds the images held out from training, each good one also with a drawn defect.

One JSONL line per sample, in the layout TRL's SFTTrainer and most vision-language fine-tuning scripts read:

    {"messages": [{"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
                  {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": TASK}]},
                  {"role": "assistant", "content": [{"type": "text", "text": TARGET}]}],
     "images": ["images/000000.png"], "meta": {"anomalous": true, "defect": "scratch"}}

TARGET is the bundle's output grammar for the chosen preset: the mask as the preset's codec writes it at its grid
(omniad_edge.tam, through training/spec.py), the explanation, the answer, in the preset's order and tags. OUT/
output_spec.json holds the whole resolved spec (export/manifest.py's defaults, the preset, the user's file); give it
to `python -m export --output-spec`, so the manifest carries exactly the prompt and grammar the model was trained on.

The collator renders the prompt with that spec's template (the runtime's own layout, not the checkpoint's chat
template, which may lay the turns out otherwise), turns images into patches with transformers' image
processor bounded as the bundle will be (export's preprocess_section at --max-image-tokens), and puts the loss on
the assistant turn and its end-of-turn token only. Why not transformers' Qwen2_5_VLProcessor: it cannot be built
without its video processor, which needs torchvision; a still-image fine-tune needs only its image processor and
tokenizer, and the one thing the processor adds (one <|image_pad|> per merged patch) is one line here.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from omniad_edge.errors import OmniADError

from . import spec as S

__all__ = ["DatasetError", "resolve_spec", "write_dataset", "load_records", "synthetic_samples", "part_samples",
           "ChatCollator", "IMAGE_PAD", "SPEC_FILE"]

SPEC_FILE = "output_spec.json"
SPLITS = ("train", "eval")
IMAGE_PAD = "<|image_pad|>"


class DatasetError(OmniADError, ValueError):
    """A chat data set cannot be written or read: no samples, an existing folder, a malformed record, a missing
    image."""


def resolve_spec(preset: str | None = None, output_spec=None) -> dict:
    """The full output spec the bundle will carry: export's defaults, then the preset, then the user's file."""
    from export.manifest import load_output_spec

    return load_output_spec(output_spec, preset)


def synthetic_samples(n: int, size: int = 224, start: int = 0):
    """n frames of the reference model's training split (omniad_edge.synth), about half with a defect: a stand-in
    source for trying the recipe; a station's own data comes from its images."""
    from .splits import generate

    return generate("train", n, start, size=size)


def part_samples(normal_dir, defects_dir=None, n: int = 1000, seed: int = 0, augment: bool = False):
    """(training samples, held-out samples) of a part: n drawn from its training images, and the held-out ones
    (training/samples.py, as `omniad-edge adapt` uses them)."""
    from .samples import SampleBuilder, load_part

    if n < 1:
        raise DatasetError(f"--samples must be at least 1, got {n}")
    builder = SampleBuilder(load_part(normal_dir, defects_dir, seed=seed), augment=augment)
    rng = np.random.default_rng(seed)
    return [builder.draw(rng) for _ in range(n)], builder.held_out(seed + 1)


def _label_grid(spec: dict, sample) -> np.ndarray:
    """The label grid of a sample under the spec: its defect's own label when the spec lists it, else the first
    foreground label (the presets have one class, "anomaly", for every defect)."""
    from types import SimpleNamespace

    m = spec["output"]["mask"]
    if sample.anomalous and sample.defect not in m["labels"]:
        label = next(name for i, name in enumerate(m["labels"]) if i != m["background"])
        sample = SimpleNamespace(anomalous=True, defect=label, mask=sample.mask)
    return S.sample_grid(spec, sample)


def _record(spec: dict, image: str, target: str, meta: dict) -> dict:
    p = spec["prompt"]
    return {"messages": [{"role": "system", "content": [{"type": "text", "text": p["system"]}]},
                         {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p["detect"]}]},
                         {"role": "assistant", "content": [{"type": "text", "text": target}]}],
            "images": [image], "meta": meta}


def write_dataset(samples, out, spec: dict, *, eval_fraction: float = 0.1, seed: int = 0,
                  overwrite: bool = False, eval_samples=None) -> dict:
    """Write samples (objects with .image HxWx3 uint8 RGB, .mask HxW bool, .anomalous, .defect, as synth.Sample) as
    a chat data set; returns {"train": n, "eval": m}. eval.jsonl holds `eval_samples` when given, else a random
    `eval_fraction` of `samples`. Written into a hidden sibling folder and renamed into place, so an interrupted
    run leaves no half data set."""
    from PIL import Image

    out = Path(out).absolute()
    if not 0 <= eval_fraction < 1:
        raise DatasetError(f"eval_fraction must be in [0, 1), got {eval_fraction!r}")
    if out.exists() and not overwrite:
        raise DatasetError(f"{out} already exists (pass overwrite to replace it)")
    counts = {}
    with staged(out) as tmp:
        (tmp / "images").mkdir()
        records = []
        given = [] if eval_samples is None else list(eval_samples)
        samples = list(samples) + given
        for i, sample in enumerate(samples):
            name = f"images/{i:06d}.png"
            Image.fromarray(np.asarray(sample.image, np.uint8)).save(tmp / name)
            target = S.target_text(spec, _label_grid(spec, sample))
            records.append(_record(spec, name, target, {"anomalous": bool(sample.anomalous),
                                                        "defect": sample.defect}))
        if not records:
            raise DatasetError("no samples to write")
        if eval_samples is None:
            n_eval = int(round(len(records) * eval_fraction))
            held = set(np.random.default_rng(seed).permutation(len(records))[:n_eval].tolist())
        else:
            held = set(range(len(records) - len(given), len(records)))
        for split in SPLITS:
            rows = [r for i, r in enumerate(records) if (i in held) == (split == "eval")]
            with open(tmp / f"{split}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            counts[split] = len(rows)
        write_spec(tmp / SPEC_FILE, spec)
    return counts


@contextmanager
def staged(out: Path):
    """A hidden sibling folder to write into; it replaces `out` when the block ends and is removed when the block
    fails, so an interrupted run never leaves a half-written folder."""
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_spec(path: Path, spec: dict) -> None:
    path.write_text(json.dumps(spec, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def load_spec(data_dir) -> dict:
    path = Path(data_dir) / SPEC_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read the data set's output spec ({exc})") from None


def load_records(data_dir, split: str = "train") -> list[dict]:
    """The records of a split, image paths made absolute; DatasetError names the line of a malformed record."""
    if split not in SPLITS:
        raise DatasetError(f"split must be one of {SPLITS}, got {split!r}")
    data_dir = Path(data_dir)
    path = data_dir / f"{split}.jsonl"
    if not path.is_file():
        raise DatasetError(f"{path} is missing (write the data set with `python -m training.hf_data`)")
    records = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            _check_record(record)
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"{path}:{line_no}: not a chat record ({exc})") from None
        images = [str(data_dir / p) for p in record["images"]]
        missing = [p for p in images if not os.path.isfile(p)]
        if missing:
            raise DatasetError(f"{path}:{line_no}: image {missing[0]} is missing")
        records.append({**record, "images": images})
    return records


def _check_record(record: dict) -> None:
    roles = [m["role"] for m in record["messages"]]
    if roles != ["system", "user", "assistant"]:
        raise ValueError(f"roles must be system, user, assistant; got {roles}")
    parts = record["messages"][1]["content"]
    n_images = sum(part["type"] == "image" for part in parts)
    if n_images != 1 or len(record["images"]) != 1:
        raise ValueError(f"one query image expected, the user turn has {n_images} and images lists "
                         f"{len(record['images'])}")


def _text(message: dict) -> str:
    return "".join(part["text"] for part in message["content"] if part["type"] == "text")


def render_prompt(prompt_spec: dict, messages: list[dict]) -> str:
    """The prompt text up to the assistant turn, laid out by the spec's templates as omniad_edge.prompt lays it
    out, with one IMAGE_PAD where the image goes."""
    image = prompt_spec["image"].format(image_pads=IMAGE_PAD)
    content = "".join(image if part["type"] == "image" else part["text"] for part in messages[1]["content"])
    return prompt_spec["template"].format(system=_text(messages[0]), content=content)


class ChatCollator:
    """Records -> a right-padded torch batch (input_ids, labels, attention_mask, mm_token_type_ids, pixel_values,
    image_grid_thw), prompt tokens masked out of the loss. Read-only after construction: DataLoader workers may
    share it."""

    def __init__(self, checkpoint, spec: dict, max_image_tokens: int = 1280):
        from transformers import AutoImageProcessor, AutoTokenizer

        from export.checkpoint import inspect_checkpoint
        from export.manifest import model_section, preprocess_section

        ckpt = inspect_checkpoint(checkpoint)
        # the bounds export writes into the manifest, so the model trains on the patch grids the runtime will feed
        self.preprocess = preprocess_section(ckpt, model_section(ckpt), max_image_tokens)
        self.image_processor = AutoImageProcessor.from_pretrained(
            ckpt.path, backend="pil", min_pixels=self.preprocess["min_pixels"],
            max_pixels=self.preprocess["max_pixels"])
        self.tokenizer = AutoTokenizer.from_pretrained(ckpt.path)
        self.spec = spec
        self.image_pad = ckpt.tokens["image_pad"]
        self.eos = ckpt.tokens["eos"][0]
        self.pad = ckpt.tokens["pad"]
        self.merge = self.preprocess["merge_size"]

    def example(self, record: dict):
        """One record -> training.data.Example (ids, labels, pixel values, grid)."""
        from PIL import Image

        from .data import IGNORE, Example

        with Image.open(record["images"][0]) as image:
            pixels = self.image_processor(images=[image.convert("RGB")], return_tensors="np")
        grid = tuple(int(x) for x in pixels["image_grid_thw"][0])
        n_tokens = grid[0] * grid[1] * grid[2] // (self.merge * self.merge)
        prompt = []
        for tid in self.tokenizer(render_prompt(self.spec["prompt"], record["messages"]),
                                  add_special_tokens=False)["input_ids"]:
            prompt.extend([tid] * n_tokens if tid == self.image_pad else [tid])
        target = _text(record["messages"][2])
        target_ids = self.tokenizer(target, add_special_tokens=False)["input_ids"] + [self.eos]
        ids = np.asarray(prompt + target_ids, np.int64)
        labels = ids.copy()
        labels[: len(prompt)] = IGNORE
        return Example(ids, labels, np.asarray(pixels["pixel_values"], np.float32), grid, len(prompt), target)

    def __call__(self, records: list[dict]) -> dict:
        from .data import collate

        return collate([self.example(r) for r in records], self.pad, self.image_pad)


def main(argv=None) -> int:
    from export.presets import PRESETS

    ap = argparse.ArgumentParser(prog="python -m training.hf_data", description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="data set folder to create")
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None,
                    help="output grammar of the model family to fine-tune (export/presets.py)")
    ap.add_argument("--output-spec", metavar="FILE", default=None, help="JSON overriding the preset key by key")
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--normal", metavar="GOOD_DIR", help="a folder of good images of the part")
    source.add_argument("--synthetic", type=int, metavar="N",
                        help="N synthetic frames (omniad_edge.synth) as the samples")
    ap.add_argument("--defects", metavar="MVTEC_DIR", help="with --normal: an MVTec AD-layout set with real defects")
    ap.add_argument("--samples", type=int, default=1000, help="with --normal: training records to draw (default 1000)")
    ap.add_argument("--augment", action="store_true",
                    help="with --normal: flips and quarter turns (textures, parts without an orientation)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=224, help="with --synthetic: frame side in pixels (default 224)")
    ap.add_argument("--eval-fraction", type=float, default=0.1,
                    help="with --synthetic: share held out in eval.jsonl (default 0.1)")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    if args.defects and not args.normal:
        ap.error("--defects needs --normal")
    try:
        spec = resolve_spec(args.preset, args.output_spec)
        if args.normal:
            train, held = part_samples(args.normal, args.defects, args.samples, args.seed, args.augment)
            counts = write_dataset(train, args.out, spec, overwrite=args.overwrite, eval_samples=held)
        else:
            counts = write_dataset(synthetic_samples(args.synthetic, args.size), args.out, spec,
                                   eval_fraction=args.eval_fraction, seed=args.seed, overwrite=args.overwrite)
    except OmniADError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{counts['train']} training and {counts['eval']} held-out records -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
