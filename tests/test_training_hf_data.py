"""training/hf_data.py: chat records whose assistant turn the runtime parses back to the sample's mask and verdict for
every preset, a collator whose prompt tokens and pixels are the runtime's own, and clear errors for bad data sets."""
import json

import numpy as np
import pytest

from omniad_edge import synth
from omniad_edge.contract import output_blocks
from training import hf_data as H
from training.data import IGNORE


def _samples(n, size=64, start=0):
    return list(H.synthetic_samples(n, size=size, start=start))


def _assistant(record):
    return record["messages"][2]["content"][0]["text"]


@pytest.mark.parametrize("preset", ["omniad", "judo", "iad-r1", "anomaly-r1"])
def test_targets_parse_back_to_the_mask_and_verdict(preset, tmp_path):
    from omniad_edge import tam

    spec = H.resolve_spec(preset)
    out = spec["output"]
    samples = _samples(12)
    assert {s.anomalous for s in samples} == {True, False}
    H.write_dataset(samples, tmp_path / "d", spec, eval_fraction=0.0)
    records = H.load_records(tmp_path / "d")
    assert len(records) == len(samples)
    saved = json.loads((tmp_path / "d" / H.SPEC_FILE).read_text())
    assert saved["output"] == out and saved["prompt"] == spec["prompt"]
    for record, sample in zip(records, samples):
        system, user, _ = record["messages"]
        assert system["content"][0]["text"] == spec["prompt"]["system"]
        assert user["content"] == [{"type": "image"}, {"type": "text", "text": spec["prompt"]["detect"]}]
        text = _assistant(record)
        # the runtime's own parsing (Inspector._inspection): blocks by the manifest's tags, mask by its codec
        blocks = output_blocks(text, out["tags"])
        assert list(blocks) == out["order"], text
        assert blocks["answer"] == out["answers"]["anomalous" if sample.anomalous else "normal"]
        if "mask" not in out["order"]:
            continue
        m = out["mask"]
        decoded = tam.codec_from_spec(m).decode(blocks["mask"])
        assert decoded.complete and not decoded.repaired, text
        fg = np.asarray(decoded.grid).reshape(m["grid"], m["grid"]) != m["background"]
        expected = np.asarray(tam.mask_to_grid(sample.mask, m["grid"], m["coverage"]), bool)
        if expected.any() or not sample.anomalous:
            assert np.array_equal(fg, expected)
        else:  # a defect too thin for the coverage rule anywhere keeps its best-covered cell
            assert fg.sum() == 1
        labels = set(np.asarray(decoded.grid).ravel().tolist()) - {m["background"]}
        if sample.anomalous:
            name = sample.defect if sample.defect in m["labels"] else "anomaly"
            assert labels == {m["labels"].index(name)}


@pytest.fixture(params=["qwen2_5_vl", "qwen2_5_vl-qwen-vocab", "qwen2_vl"])
def any_checkpoint(request, tmp_path):
    """Tiny checkpoints: Qwen2.5-VL with the custom and the real Qwen vocabulary, and Qwen2-VL."""
    if request.param == "qwen2_vl":
        from helpers.tiny_models import write_tiny_checkpoint

        return write_tiny_checkpoint(tmp_path / "qwen2vl", architecture="qwen2_vl")
    return request.getfixturevalue("qwen_checkpoint" if "qwen-vocab" in request.param else "tiny_checkpoint")


def test_collator_gives_the_runtime_prompt_pixels_and_loss_mask(any_checkpoint, tmp_path):
    from export.checkpoint import inspect_checkpoint
    from omniad_edge.preprocess import preprocess_image
    from omniad_edge.prompt import PromptBuilder
    from omniad_edge.tokenizer import Tokenizer

    spec = H.resolve_spec(None)
    samples = [synth.make_sample(synth.FIRST_UNSEEN_SEED + i, size=size)
               for i, size in enumerate([(56, 56), (90, 150), (224, 224), (200, 70)])]
    H.write_dataset(samples, tmp_path / "d", spec, eval_fraction=0.0)
    records = H.load_records(tmp_path / "d")
    collator = H.ChatCollator(any_checkpoint, spec, max_image_tokens=32)
    tokens = inspect_checkpoint(any_checkpoint).tokens
    builder = PromptBuilder(spec["prompt"], tokens, Tokenizer(any_checkpoint / "tokenizer.json"))
    grids = []
    for record, sample in zip(records, samples):
        ex = collator.example(record)
        pre = preprocess_image(sample.image, collator.preprocess)
        grids.append(tuple(pre.grid_thw))
        assert ex.grid_thw == tuple(pre.grid_thw)
        np.testing.assert_allclose(ex.pixel_values, pre.pixel_values, atol=1e-5)
        n_tokens = int(np.prod(pre.grid_thw)) // 4
        assert np.array_equal(ex.input_ids[: ex.prompt_len], builder.detect([n_tokens]).ids)
        assert (ex.labels[: ex.prompt_len] == IGNORE).all()
        assert np.array_equal(ex.labels[ex.prompt_len:], ex.input_ids[ex.prompt_len:])
        assert collator.tokenizer.decode(ex.input_ids[ex.prompt_len:].tolist()) == _assistant(record) + "<|im_end|>"
        assert ex.input_ids[-1] == tokens["eos"][0]
    assert len(set(grids)) == len(grids)  # every size kept its own patch grid

    batch = collator(records)
    lengths = [len(collator.example(r).input_ids) for r in records]
    assert batch["input_ids"].shape == (len(records), max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()
    assert batch["image_grid_thw"].tolist() == [list(g) for g in grids]
    assert batch["pixel_values"].shape[0] == sum(int(np.prod(g)) for g in grids)
    assert batch["mm_token_type_ids"].sum().item() == sum(int(np.prod(g)) // 4 for g in grids)


def test_bad_data_sets_are_refused_by_name(tmp_path):
    spec = H.resolve_spec(None)
    with pytest.raises(H.DatasetError, match="no samples"):
        H.write_dataset([], tmp_path / "empty", spec)
    assert not list(tmp_path.iterdir())  # nothing half-written left behind

    def interrupted():
        yield from _samples(2)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        H.write_dataset(interrupted(), tmp_path / "cut", spec)
    assert not list(tmp_path.iterdir())

    H.write_dataset(_samples(3), tmp_path / "d", spec, eval_fraction=0.34)
    assert len(H.load_records(tmp_path / "d", "eval")) == 1 and len(H.load_records(tmp_path / "d")) == 2
    with pytest.raises(H.DatasetError, match="already exists"):
        H.write_dataset(_samples(1), tmp_path / "d", spec)
    with pytest.raises(H.DatasetError, match="split must be"):
        H.load_records(tmp_path / "d", "test")

    train = tmp_path / "d" / "train.jsonl"
    lines = train.read_text().splitlines()
    record = json.loads(lines[1])
    train.write_text("\n".join([lines[0], "{not json"]) + "\n")
    with pytest.raises(H.DatasetError, match=r"train\.jsonl:2: not a chat record"):
        H.load_records(tmp_path / "d")
    record["messages"] = record["messages"][1:]
    train.write_text(json.dumps(record) + "\n")
    with pytest.raises(H.DatasetError, match="roles must be system, user, assistant"):
        H.load_records(tmp_path / "d")
    record = json.loads(lines[0])
    (tmp_path / "d" / record["images"][0]).unlink()
    train.write_text(lines[0] + "\n")
    with pytest.raises(H.DatasetError, match="is missing"):
        H.load_records(tmp_path / "d")


def test_command_line_writes_a_data_set(tmp_path, capsys):
    assert H.main([str(tmp_path / "d"), "--preset", "iad-r1", "--synthetic", "3", "--size", "64",
                   "--eval-fraction", "0"]) == 0
    assert "3 training and 0 held-out records" in capsys.readouterr().out
    assert len(H.load_records(tmp_path / "d")) == 3
    assert H.main([str(tmp_path / "d"), "--synthetic", "1"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_command_line_writes_a_part_data_set_with_its_held_out_images(tmp_path, capsys):
    from test_training_userdata import write_mvtec

    root = write_mvtec(tmp_path / "mv", good=5, types=("crack",), per_type=2)
    out = tmp_path / "d"
    assert H.main([str(out), "--preset", "iad-r1", "--normal", str(root / "train" / "good"), "--defects", str(root),
                   "--samples", "6", "--seed", "3"]) == 0
    assert "6 training and" in capsys.readouterr().out
    train, held = H.load_records(out, "train"), H.load_records(out, "eval")
    assert len(train) == 6
    # eval: each held-out good image, the same with a drawn defect, and the held-out real crack
    assert sum(r["meta"]["anomalous"] for r in held) == sum(not r["meta"]["anomalous"] for r in held) + 1
    assert any(r["meta"]["defect"] == "crack" for r in held)
    with pytest.raises(SystemExit) as exc:
        H.main([str(tmp_path / "e"), "--defects", str(root), "--synthetic", "1"])
    assert exc.value.code == 2 and "--defects needs --normal" in capsys.readouterr().err
