"""Full-size models with random weights: export them and run them end to end against transformers.

    python benchmarks/fullsize.py qwen2.5-vl-3b [--work /tmp/fullsize] [--steps build export run vision]
        [--precisions int4 fp32 fp16] [--tokens 32] [--out benchmarks/results]

MODEL is qwen2.5-vl-3b or qwen2-vl-2b: a Hugging Face folder with the exact shapes of Qwen2.5-VL-3B-Instruct or
Qwen2-VL-2B-Instruct (vocabulary 151,936, tied embeddings, bfloat16 safetensors as published), random weights and
the real Qwen tokenizer, written tensor by tensor (never a whole model in memory). Steps, each in its own subprocess
so its memory is returned and its peak resident set is its own (os.wait4):

- build: the checkpoint under WORK/MODEL/hf.
- export: `python -m export` per precision (default vision precision: fp32 for fp32, fp16 for fp16, int8 for int4); wall time and
  peak RSS of the export process.
- run: one frame at 448x448 (256 image tokens) and one at 896x896 (1024 image tokens), detect mode, greedy, at most
  --tokens new tokens, after one warm-up frame at 448x448: the Inspector per bundle, then transformers `generate()`
  (float32, its default attention) on the same prompt ids and pixels. Per-stage times (preprocess, vision,
  prefill, decode per token) and the peak RSS of each runtime's process; greedy agreement with transformers
  (common prefix) per bundle. Each runtime runs in its own process, one after the other, so a float32 bundle
  (~15 GiB for 3B) and transformers' float32 model never share the 24 GiB. float32 and fp16 bundles must write
  transformers' greedy tokens (asserted over --assert-prefix tokens before any time is reported); int4 on random
  weights shares none (its agreement is reported as measured). fp16 on a CPU is a GPU format run through casts:
  ONNX Runtime's CPU provider upcasts its weights at load (a 0.5B-sized fp16 decoder peaks at 3.3 GiB against
  2.5 GiB for fp32), so a 3B fp16 bundle does not fit beside anything here; export it, run it on a GPU.
- vision: the bundles' vision graphs alone at 1280 image tokens (896x1120), peak extra memory during the call
  (largest resident set sampled every 5 ms minus the resident set before it).

Random weights are drawn N(0, 0.05) for matrices (benchmarks/models.py's INIT_STD: greedy margins far above
rounding differences), norms 1, biases 0. Results accumulate in OUT/fullsize-MODEL.json and .md (a rerun of a
step replaces its rows); every row has the load average: the machine is shared.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

MROPE = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}
MODELS = {  # shapes of the published configs (Qwen/Qwen2.5-VL-3B-Instruct, Qwen/Qwen2-VL-2B-Instruct)
    "qwen2.5-vl-3b": ("qwen2_5_vl",
                      dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                           num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=128000,
                           rope_parameters=MROPE),
                      dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2)),
    "qwen2-vl-2b": ("qwen2_vl",
                    dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=32768,
                         rope_parameters=MROPE),
                    dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4, patch_size=14,
                         spatial_merge_size=2, temporal_patch_size=2)),
}
FRAMES = ((448, 448), (448, 448), (896, 896))  # the first is the warm-up
VISION_FRAME = (896, 1120)  # 32 x 40 merged = 1280 image tokens
THREADS = 2
SHARD_BYTES = 2 * 2**30


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _log(msg: str) -> None:
    print(f"[fullsize {time.strftime('%H:%M:%S')}] {msg} (load {_load()})", file=sys.stderr, flush=True)


# -- build --------------------------------------------------------------------------------------------------------
def build(model: str, hf: Path) -> dict:
    """The checkpoint folder, its weights drawn and written one shard at a time in bfloat16."""
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

    from models import INIT_STD, checkpoint_config, write_side_files, write_tokenizer

    architecture, text, vision = MODELS[model]
    hf.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer(hf)
    config = checkpoint_config(architecture, text, vision, ids)
    config.dtype = "bfloat16"
    cls = {"qwen2_5_vl": Qwen2_5_VLForConditionalGeneration, "qwen2_vl": Qwen2VLForConditionalGeneration}
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in cls[architecture](config).state_dict().items() if k != "lm_head.weight"}
    gen = torch.Generator().manual_seed(0)
    shards, shard, size, weight_map = [], {}, 0, {}

    def flush():
        name = f"model-{len(shards) + 1:05d}.safetensors"
        save_file(shard, str(hf / name), metadata={"format": "pt"})
        shards.append(name)
        weight_map.update({k: name for k in shard})

    for key, shape in shapes.items():
        if len(shape) >= 2:
            t = torch.empty(shape).normal_(0.0, INIT_STD, generator=gen).to(torch.bfloat16)
        elif key.endswith("weight"):  # RMSNorm / LayerNorm scales
            t = torch.ones(shape, dtype=torch.bfloat16)
        else:
            t = torch.zeros(shape, dtype=torch.bfloat16)
        shard[key] = t
        size += t.numel() * 2
        if size >= SHARD_BYTES:
            flush()
            shard, size = {}, 0
    if shard:
        flush()
    total = sum(int(np.prod(s)) for s in shapes.values())
    config.save_pretrained(hf)
    (hf / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total * 2}, "weight_map": weight_map}, indent=1))
    write_side_files(hf, ids)
    return {"parameters": total, "shards": len(shards)}


# -- run ----------------------------------------------------------------------------------------------------------
def _frames():
    from helpers.frames import make_frame

    return [make_frame(h, w, seed=i) for i, (h, w) in enumerate(FRAMES)]


def run_omniad(bundle: Path, tokens: int) -> dict:
    from compare import OmniadRunner

    from omniad_edge import bench

    runner = OmniadRunner(bundle, tokens, THREADS, "detect", spinning=False)
    rows = [runner.row(frame, i < 1) for i, frame in enumerate(_frames())]
    res = {"rows": rows, "info": runner.info()}
    runner.close()
    for row in res["rows"]:
        row.pop("image_embeds")
        row["prompt_ids"] = row["prompt_ids"].tolist()
    return {**res, "peak_rss_mib": bench.peak_rss_mib()}


def run_transformers(hf: Path, bundle: Path, prompts: list[dict], tokens: int) -> dict:
    """generate() once per frame; vision timed by hooks on the vision tower, prefill up to the first sampling
    step, decode per token from the later steps (a logits processor stamps each)."""
    import torch
    import transformers
    from compare import image_processor, mask_closed_checker
    from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

    from export.checkpoint import ARCHITECTURES, inspect_checkpoint
    from omniad_edge import bench

    torch.set_num_threads(THREADS)
    manifest = json.loads((bundle / "manifest.json").read_text())
    cls = getattr(transformers, ARCHITECTURES[inspect_checkpoint(hf).architecture])
    t0 = time.perf_counter()
    model = cls.from_pretrained(str(hf), dtype=torch.float32).eval()
    load_s = time.perf_counter() - t0
    rss_loaded = bench.peak_rss_mib()
    proc = image_processor(manifest)
    toks = manifest["tokens"]
    closed = mask_closed_checker(bundle, manifest)
    stamps: dict = {}
    visual = model.model.visual
    visual.register_forward_pre_hook(lambda *a: stamps.__setitem__("v0", time.perf_counter()))
    visual.register_forward_hook(lambda *a: stamps.__setitem__("v1", time.perf_counter()))

    class Stamp(LogitsProcessor):
        def __call__(self, input_ids, scores):
            stamps.setdefault("steps", []).append(time.perf_counter())
            return scores

    class MaskClosed(StoppingCriteria):  # detect: stop on the token that closes the mask, as the Inspector does
        def __init__(self, start: int):
            self.start = start

        def __call__(self, input_ids, scores, **kwargs):
            return torch.tensor([closed(r[self.start:].tolist()) for r in input_ids], dtype=torch.bool)

    rows = []
    for i, (frame, prompt) in enumerate(zip(_frames(), prompts)):
        stamps.clear()
        t0 = time.perf_counter()
        feats = proc(images=[frame], return_tensors="pt")
        t1 = time.perf_counter()
        grid = tuple(int(v) for v in feats["image_grid_thw"][0])
        if grid != tuple(prompt["grid"]):
            raise SystemExit(f"image grids differ: transformers {grid} vs omniad_edge {prompt['grid']}")
        ids = torch.tensor([prompt["prompt_ids"]])
        with torch.no_grad():
            t2 = time.perf_counter()
            seq = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 pixel_values=feats["pixel_values"], image_grid_thw=feats["image_grid_thw"],
                                 mm_token_type_ids=(ids == toks["image_pad"]).int(), do_sample=False,
                                 max_new_tokens=tokens, eos_token_id=list(toks["eos"]), pad_token_id=toks["pad"],
                                 logits_processor=LogitsProcessorList([Stamp()]),
                                 stopping_criteria=StoppingCriteriaList([MaskClosed(ids.shape[1])]))
            t3 = time.perf_counter()
        steps = stamps["steps"]
        out = seq[0, ids.shape[1]:].tolist()
        rows.append({"tokens": out, "preprocess": (t1 - t0) * 1e3, "vision": (stamps["v1"] - stamps["v0"]) * 1e3,
                     "prefill": (steps[0] - t2) * 1e3 - (stamps["v1"] - stamps["v0"]) * 1e3,
                     "decode_per_step": (steps[-1] - steps[0]) * 1e3 / (len(steps) - 1) if len(steps) > 1 else None,
                     "decode": (t3 - steps[0]) * 1e3, "total": (t3 - t0) * 1e3, "warmup": i == 0})
    return {"rows": rows, "load_s": load_s, "rss_after_load_mib": rss_loaded, "peak_rss_mib": bench.peak_rss_mib(),
            "attn_implementation": model.config._attn_implementation}


def vision_memory(bundle: Path) -> dict:
    """The bundle's vision graph alone at 1280 image tokens: warm-up call, timed call, peak extra memory."""
    from vision_scaling import _PeakRss

    from helpers.frames import make_frame
    from omniad_edge import Inspector
    from omniad_edge.preprocess import concat_images, preprocess_image

    inspector = Inspector(str(bundle), threads=THREADS)
    vision = inspector.bundle.model["vision"]
    image = preprocess_image(make_frame(*VISION_FRAME, seed=7), inspector.bundle.preprocess)
    inputs = concat_images([image], vision["spatial_merge_size"], vision["window_size"], vision["patch_size"])
    times = []
    with _PeakRss() as peak:
        for _ in range(2):
            t0 = time.perf_counter()
            out = inspector.backend.encode_image(inputs)
            times.append(time.perf_counter() - t0)
    return {"tokens": int(np.asarray(out).shape[0]), "first_s": times[0], "second_s": times[1],
            "peak_extra_mib": peak.extra_mb, "precision": inspector.bundle.graphs["vision"]["precision"],
            "attention": inspector.bundle.graphs["vision"].get("attention")}


# -- orchestration --------------------------------------------------------------------------------------------------
def _child(args: list, log: str) -> tuple[dict, float, float]:
    """Runs this file with --child ARGS; returns (its JSON result, wall s, peak RSS MiB of that process)."""
    _log(log)
    cmd = [sys.executable, __file__, "--child", json.dumps([str(a) for a in args])]
    return _measured(cmd)


def _measured(cmd: list[str]) -> tuple[dict, float, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{cmd[2:]} failed with status {os.waitstatus_to_exitcode(status)}")
    lines = out.strip().splitlines()
    result = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    return result, wall, usage.ru_maxrss / 1024


def _export(hf: Path, bundle: Path, precision: str) -> dict:
    cmd = [sys.executable, "-m", "export", str(hf), str(bundle), "--precision", precision, "--overwrite",
           "--name", f"{bundle.parent.name}-{precision}"]
    _log(f"export {precision}: {' '.join(cmd[1:])}")
    load = _load()
    _, wall, peak = _measured(cmd)
    manifest = json.loads((bundle / "manifest.json").read_text())
    sizes = {p.name: p.stat().st_size for p in bundle.iterdir()}
    return {"precision": precision, "vision_precision": manifest["graphs"]["vision"]["precision"],
            "wall_s": wall, "peak_rss_mib": peak, "bundle_mib": sum(sizes.values()) / 2**20,
            "files_mib": {k: v / 2**20 for k, v in sizes.items()}, "load_average": load}


def _prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _kept(rows: list[dict]) -> list[dict]:
    return [r for r in rows if not r["warmup"]]


def _compare(omniad: dict, transformers: dict, eos) -> list[dict]:
    """Per timed frame: agreement (common greedy prefix) and the stage ratios omniad_edge / transformers."""
    from compare import _strip_eos

    rows = []
    for o, t in zip(_kept(omniad["rows"]), _kept(transformers["rows"])):
        a, b = _strip_eos(o["tokens"], eos), _strip_eos(t["tokens"], eos)
        stages = {k: (o[k], t[k], o[k] / t[k] if o[k] and t[k] else None)
                  for k in ("preprocess", "vision", "prefill", "decode_per_step", "total")}
        rows.append({"grid": o["grid"], "image_tokens": o["grid"][1] * o["grid"][2] // 4,
                     "prompt_tokens": len(o["prompt_ids"]), "new_tokens": [len(a), len(b)],
                     "common_prefix": _prefix(a, b), "identical": a == b, "stages_ms": stages})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", choices=sorted(MODELS))
    p.add_argument("--work", default="/tmp/fullsize")
    p.add_argument("--steps", nargs="+", default=["build", "export", "run", "vision"],
                   choices=["build", "export", "run", "vision"])
    p.add_argument("--precisions", nargs="+", default=["int4", "fp32"],
                   choices=["int4", "fp32", "fp16"])
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--assert-prefix", type=int, default=8,
                   help="fp32 and fp16: identical greedy tokens with transformers over at least this many tokens, asserted "
                        "before times are compared")
    p.add_argument("--reuse-transformers", action="store_true",
                   help="compare with the transformers run already in the results (same prompts) instead of "
                        "running it again; the markdown says which bundles ran in the same run as it")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    from omniad_edge import bench

    work = Path(args.work) / args.model
    hf = work / "hf"
    out = Path(args.out) / f"fullsize-{args.model}.json"
    res = json.loads(out.read_text()) if out.exists() else {"model": args.model, "shapes": {}}
    res["shapes"] = {"architecture": MODELS[args.model][0], "text": MODELS[args.model][1],
                     "vision": MODELS[args.model][2], "vocab_size": 151936, "tie_word_embeddings": True,
                     "weights": "random N(0, 0.05) matrices, norms 1, biases 0; bfloat16 safetensors"}
    res["machine"], res["libraries"] = bench.machine_info(), bench.library_versions()

    def save():
        res["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        out.write_text(json.dumps(_compact(res), indent=1, default=_json_default))
        out.with_suffix(".md").write_text(markdown(res) + "\n")

    if "build" in args.steps:
        load = _load()
        info, wall, peak = _child(["build", args.model, hf], f"building {hf}")
        res["build"] = {**info, "wall_s": wall, "peak_rss_mib": peak, "load_average": load}
        save()
    bundles = {prec: work / f"bundle-{prec}" for prec in args.precisions}
    if "export" in args.steps:
        for prec, bundle in bundles.items():
            res.setdefault("export", {})[prec] = _export(hf, bundle, prec)
            save()
    if "run" in args.steps:
        runs = res.setdefault("run", {"tokens": args.tokens})
        runs["tokens"] = args.tokens
        for prec, bundle in bundles.items():
            load = _load()
            info, wall, peak = _child(["omniad", bundle, args.tokens], f"omniad_edge {prec}")
            runs[f"omniad_{prec}"] = {**info, "wall_s": wall, "process_peak_rss_mib": peak, "load_average": load}
            save()
        first = runs[f"omniad_{args.precisions[0]}"]
        prompts = [{"prompt_ids": r["prompt_ids"], "grid": r["grid"]} for r in first["rows"]]
        prompt_file = work / "prompts.json"
        if args.reuse_transformers and "transformers" in runs:
            if json.loads(prompt_file.read_text()) != prompts:
                raise SystemExit("--reuse-transformers: the stored transformers run had other prompts")
            runs["transformers"]["reused_for"] = args.precisions
        else:
            prompt_file.write_text(json.dumps(prompts))
            load = _load()
            info, wall, peak = _child(["transformers", hf, bundles[args.precisions[0]], prompt_file, args.tokens],
                                      "transformers float32")
            runs["transformers"] = {**info, "wall_s": wall, "process_peak_rss_mib": peak, "load_average": load,
                                    "run_with": args.precisions}
        eos = set(json.loads((bundles[args.precisions[0]] / "manifest.json").read_text())["tokens"]["eos"])
        for prec in args.precisions:
            o = runs[f"omniad_{prec}"]
            if [r["prompt_ids"] for r in o["rows"]] != [q["prompt_ids"] for q in prompts]:
                raise SystemExit(f"omniad_edge {prec} used other prompt ids than transformers was given")
            runs[f"compare_{prec}"] = _compare(o, runs["transformers"], eos)
        save()
        float_rows = [(p, r) for p in ("fp32", "fp16") for r in runs.get(f"compare_{p}", [])]
        for prec, row in float_rows:  # float bundles vs float32: decisive random logits must agree
            if row["common_prefix"] < min(args.assert_prefix, *row["new_tokens"]):
                raise SystemExit(f"{prec} greedy tokens differ from transformers' at token {row['common_prefix']} "
                                 f"({row['image_tokens']} image tokens)")
    if "vision" in args.steps:
        for prec, bundle in bundles.items():
            load = _load()
            info, wall, peak = _child(["vision", bundle], f"vision graph at 1280 tokens, {prec} bundle")
            res.setdefault("vision_1280", {})[prec] = {**info, "process_peak_rss_mib": peak, "load_average": load}
            save()
    print(markdown(res))
    return 0


def child(argv: list[str]) -> None:
    kind, *rest = argv
    if kind == "build":
        result = build(rest[0], Path(rest[1]))
    elif kind == "omniad":
        result = run_omniad(Path(rest[0]), int(rest[1]))
    elif kind == "transformers":
        result = run_transformers(Path(rest[0]), Path(rest[1]), json.loads(Path(rest[2]).read_text()), int(rest[3]))
    elif kind == "vision":
        result = vision_memory(Path(rest[0]))
    else:
        raise SystemExit(f"unknown child {kind!r}")
    print(json.dumps(result, default=_json_default))


# -- report ---------------------------------------------------------------------------------------------------------
def _f(v, digits=1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def markdown(res: dict) -> str:
    s = res["shapes"]
    lines = [f"## {res['model']}: full-size shapes, random weights", "",
             f"{s['architecture']}; text {s['text']}; vision {s['vision']}; vocabulary {s['vocab_size']}, tied "
             f"embeddings; {s['weights']}.", ""]
    if "build" in res:
        b = res["build"]
        lines += [f"- checkpoint: {b['parameters'] / 1e9:.2f} B parameters in {b['shards']} shards, written in "
                  f"{b['wall_s']:.0f} s, peak RSS {b['peak_rss_mib']:.0f} MiB (load {b['load_average']})", ""]
    if "export" in res:
        lines += ["### Export (`python -m export`, one process per precision)", "",
                  "| precision | vision precision | wall s | peak RSS MiB | bundle MiB | load average |",
                  "| --- | --- | ---: | ---: | ---: | --- |"]
        for e in res["export"].values():
            lines.append(f"| {e['precision']} | {e['vision_precision']} | {e['wall_s']:.0f} | {e['peak_rss_mib']:.0f} "
                         f"| {e['bundle_mib']:.0f} | {e['load_average']} |")
        lines.append("")
    run = res.get("run", {})
    t = run.get("transformers")
    if t:
        lines += [f"### End to end, detect mode, at most {run['tokens']} new tokens, {THREADS} threads "
                  "(one warm-up frame at 448x448 first)", "",
                  f"transformers float32 ({t['attn_implementation']} attention): load {t['load_s']:.0f} s, RSS "
                  f"after load {t['rss_after_load_mib']:.0f} MiB, process peak {t['process_peak_rss_mib']:.0f} MiB "
                  f"(load {t['load_average']}).", ""]
        names = {"preprocess": "preprocess", "vision": "vision", "prefill": "prefill",
                 "decode_per_step": "decode / token", "total": "end to end"}
        for key in [k for k in run if k.startswith("compare_")]:
            prec = key.split("_", 1)[1]
            o = run[f"omniad_{prec}"]
            same = prec in t.get("run_with", [])
            lines += [f"omniad_edge {prec} bundle: process peak {o['process_peak_rss_mib']:.0f} MiB "
                      f"(load {o['load_average']}); transformers measured "
                      + ("in the same run." if same else "in an earlier run (--reuse-transformers)."), ""]
            frames = run[key]
            for row in frames:
                lines.append(f"- {row['image_tokens']} image tokens (grid {row['grid']}), prompt {row['prompt_tokens']} "
                             f"tokens; new tokens omniad_edge / transformers {row['new_tokens'][0]} / "
                             f"{row['new_tokens'][1]}; identical greedy prefix {row['common_prefix']} tokens")
            head = "".join(f" omniad_edge ms ({r['image_tokens']}) | transformers ms ({r['image_tokens']}) | ratio |"
                           for r in frames)
            lines += ["", "| stage |" + head, "| --- |" + " ---: | ---: | ---: |" * len(frames)]
            for stage, name in names.items():
                cells = "".join(f" {_f(r['stages_ms'][stage][0])} | {_f(r['stages_ms'][stage][1])} | "
                                f"{_f(r['stages_ms'][stage][2], 3)} |" for r in frames)
                lines.append(f"| {name} |" + cells)
            lines.append("")
    if "vision_1280" in res:
        lines += ["### Vision graph alone at 1280 image tokens (896x1120), peak extra memory", "",
                  "| bundle | vision precision | attention | first call s | second call s | peak extra MiB | "
                  "load average |", "| --- | --- | --- | ---: | ---: | ---: | --- |"]
        for prec, v in res["vision_1280"].items():
            lines.append(f"| {prec} | {v['precision']} | {v['attention']} | {v['first_s']:.1f} | "
                         f"{v['second_s']:.1f} | {v['peak_extra_mib']:.0f} | {v['load_average']} |")
        lines.append("")
    m = res["machine"]
    lines.append(f"Machine: {m['cpu']}, {m['usable_cores']} cores usable, {m.get('memory_gib')} GiB, shared with "
                 f"other work (load averages per row); " + ", ".join(f"{k} {v}" for k, v in res["libraries"].items()))
    return "\n".join(lines)


def _compact(res: dict) -> dict:
    """The results as committed: prompt ids (WORK/MODEL/prompts.json) by their count."""
    res = json.loads(json.dumps(res, default=_json_default))
    for name, run in res.get("run", {}).items():
        for row in run.get("rows", []) if isinstance(run, dict) else []:
            if isinstance(row.get("prompt_ids"), list):
                row["prompt_ids"] = len(row["prompt_ids"])
    return res


def _json_default(v):
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    if isinstance(v, (np.ndarray, tuple)):
        return list(v)
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(json.loads(sys.argv[2]))
    else:
        raise SystemExit(main())
