"""A small byte-level BPE tokenizer for the reference model, trained on its own prompts and targets.

    python -m training.tokenizer OUT_DIR        # writes OUT_DIR/tokenizer.json and OUT_DIR/chat_template.jinja

Byte-level, so any text round-trips exactly (the runtime parses the decoded mask text); digits are single tokens;
Qwen2.5-VL's chat and vision special tokens come first with fixed ids; the grammar tags are added tokens so each is
one id and survives decoding.
"""
from __future__ import annotations

import argparse
from pathlib import Path

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
           "<|video_pad|>"]
VOCAB_SIZE = 768

CHAT_TEMPLATE = (Path(__file__).resolve().parent / "chat_template.jinja")


def corpus(spec: dict, n_samples: int = 3000) -> list[str]:
    """Texts the model reads and writes: prompts, targets of real training frames, every explanation variant."""
    from . import spec as S
    from .splits import generate

    p = spec["prompt"]
    # prompts repeated so BPE merges their words (min_frequency) and a prompt costs few tokens
    texts = [S.render_prompt(spec, 1, query_intro=q) for q in (False, True) for _ in range(50)]
    texts += [p["reference_intro"].format(n=n) for n in range(1, 5) for _ in range(10)]
    labels = spec["output"]["mask"]["labels"]
    e = S.EXPLANATION
    for row in e["where"]:
        for where in row:
            for kind in labels[1:]:
                for percent in (1, 5, 12, 40, 100):
                    texts.append(e["anomalous"].format(type=kind.capitalize(), where=where, percent=percent))
    texts.append(e["normal"])
    texts.extend(" ".join(labels) for _ in range(5))
    texts.extend(" ".join(str(i) for i in range(100)) for _ in range(3))
    for i, sample in enumerate(generate("train", n_samples)):
        texts.append(S.target_text(spec, S.sample_grid(spec, sample)))
    return texts


def build(spec: dict, n_samples: int = 3000):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=2, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(spec, n_samples), trainer=trainer)
    tags = [t for pair in spec["output"]["tags"].values() for t in pair]
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in tags])
    return tok


def main(argv=None):
    from .spec import load_spec

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--samples", type=int, default=3000, help="training frames whose targets feed the BPE")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    tok = build(load_spec(), args.samples)
    tok.save(str(args.out / "tokenizer.json"))
    (args.out / "chat_template.jinja").write_text(CHAT_TEMPLATE.read_text(encoding="utf-8"), encoding="utf-8")
    print(f"tokenizer: {tok.get_vocab_size()} tokens -> {args.out / 'tokenizer.json'}")


if __name__ == "__main__":
    main()
