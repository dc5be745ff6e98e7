"""Speculative decoding (drafts from earlier outputs) against plain decoding, interleaved frame by frame.

    python benchmarks/speculative.py [--bundle DIR] [--frames 200] [--threads 2] [--first N]
        [--name speculative-reference-explain]

Two Inspectors on one bundle, `speculative=False` and `True`, take the test split's frames (training.evaluate's, a
station's mix of good and defective parts) in alternating order, so drift hits both alike. The speculative one
learns as it goes, from its first frame: the figures include its learning. Per frame: text, score, decode and total
ms, decoder runs, drafted and confirmed tokens. Prints and writes (benchmarks/results/NAME.{json,md}) the texts that
differ, medians over good and defective frames, and the ratios speculative / plain, with the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=None, help="bundle directory (default: the embedded default)")
    p.add_argument("--mode", choices=["explain"], default="explain", help="(speculation runs in explain mode)")
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--first", type=int, default=None,
                   help="NgramDrafter(first=N): tokens drafted from an n-gram seen once (default: the drafter's)")
    p.add_argument("--name", default=None, help="write benchmarks/results/NAME.{json,md}")
    args = p.parse_args(argv)

    from omniad_edge import Inspector
    from training.evaluate import frames

    runners = {name: Inspector(args.bundle, mode=args.mode, threads=args.threads, speculative=name == "speculative")
               for name in ("plain", "speculative")}
    last = {}  # runner name -> its latest Generation
    for name, ins in runners.items():
        def recording(*a, _generate=ins.generator.generate, _name=name, **k):
            out = _generate(*a, **k)
            last[_name] = out[0]
            return out

        ins.generator.generate = recording
    if not runners["speculative"].options["speculative"]:
        raise SystemExit(f"{runners['plain'].bundle.name}: the decoder has no draft logits (re-export the bundle), "
                         f"or mode {args.mode} (speculation runs in explain mode)")
    if args.first is not None:
        from omniad_edge.drafting import NgramDrafter

        runners["speculative"].generator.drafter = NgramDrafter(first=args.first)
    load = [os.getloadavg()]
    rows = []
    started = time.time()
    for k, (sample, rgb) in enumerate(frames(args.frames, 0, 224, ["rgb"])):
        row = {"seed": sample.seed, "anomalous": bool(sample.anomalous)}
        order = ("plain", "speculative") if k % 2 == 0 else ("speculative", "plain")
        for name in order:
            ins = runners[name]
            r = ins.run(rgb)
            g = last[name]
            row[name] = {"text": r.text, "score": r.anomaly_probability, "decode_ms": r.timings["decode"],
                         "total_ms": r.timings["total"], "tokens": len(g.ids), "forwards": g.forwards,
                         "drafted": g.drafted_tokens, "accepted": g.accepted_drafts}
        rows.append(row)
        if k % 50 == 49:
            load.append(os.getloadavg())
    load.append(os.getloadavg())
    result = summarize(rows, args, load, time.time() - started)
    text = markdown(result)
    print(text)
    if args.name:
        out = ROOT / "benchmarks" / "results"
        (out / f"{args.name}.json").write_text(json.dumps({**result, "rows": rows}, indent=1))
        (out / f"{args.name}.md").write_text(text)


def summarize(rows, args, load, seconds) -> dict:
    def med(key, name, subset):
        return statistics.median(r[name][key] for r in subset) if subset else None

    groups = {"all": rows, "good": [r for r in rows if not r["anomalous"]],
              "defective": [r for r in rows if r["anomalous"]]}
    table = {}
    for group, subset in groups.items():
        entry = {"frames": len(subset)}
        for key in ("decode_ms", "total_ms", "forwards", "tokens"):
            entry[key] = {name: med(key, name, subset) for name in ("plain", "speculative")}
            if key.endswith("_ms") and entry[key]["plain"]:
                entry[key]["ratio"] = entry[key]["speculative"] / entry[key]["plain"]
        if subset:  # decode time per generated token after the first, summed over the frames (throughput)
            for name in ("plain", "speculative"):
                entry.setdefault("decode_ms_per_token", {})[name] = (
                    sum(r[name]["decode_ms"] for r in subset) / sum(max(1, r[name]["tokens"] - 1) for r in subset))
            per = entry["decode_ms_per_token"]
            per["ratio"] = per["speculative"] / per["plain"]
            drafted = sum(r["speculative"]["drafted"] for r in subset)
            entry["confirmed_share"] = sum(r["speculative"]["accepted"] for r in subset) / drafted if drafted else None
        table[group] = entry
    differ = [r["seed"] for r in rows if r["plain"]["text"] != r["speculative"]["text"]]
    return {"bundle": args.bundle or "embedded default", "mode": args.mode, "frames": len(rows), "first": args.first,
            "threads": args.threads, "seconds": round(seconds, 1), "load_average": load,
            "text_differs": len(differ), "text_differs_seeds": differ,
            "max_score_diff": max(abs(r["plain"]["score"] - r["speculative"]["score"]) for r in rows),
            "table": table}


def markdown(res: dict) -> str:
    first = "" if res["first"] is None else f", drafter first={res['first']}"
    lines = [f"# Speculative vs plain decoding: {res['bundle']}, {res['mode']}, {res['frames']} frames, "
             f"{res['threads']} threads{first}",
             "",
             "Load average (1/5/15 min) during the run: "
             + ", ".join("/".join(f"{x:.2f}" for x in la) for la in res["load_average"]),
             f"Texts that differ: {res['text_differs']} of {res['frames']}; largest score difference "
             f"{res['max_score_diff']:.2e}",
             "",
             "| frames | n | decode ms plain | decode ms spec | ratio | frame ms plain | frame ms spec | ratio | "
             "runs plain | runs spec | decode ms/token ratio | drafts confirmed |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for group, e in res["table"].items():
        if not e["frames"]:
            continue
        d, t, f = e["decode_ms"], e["total_ms"], e["forwards"]
        share = "-" if e["confirmed_share"] is None else f"{100 * e['confirmed_share']:.0f}%"
        lines.append(f"| {group} | {e['frames']} | {d['plain']:.2f} | {d['speculative']:.2f} | {d['ratio']:.2f}x | "
                     f"{t['plain']:.2f} | {t['speculative']:.2f} | {t['ratio']:.2f}x | {f['plain']:g} | "
                     f"{f['speculative']:g} | {e['decode_ms_per_token']['ratio']:.2f}x | {share} |")
    lines += ["", "Medians per frame; decode ms/token: decode time over generated tokens after the first, summed over "
              "the frames. Runs: decoder runs after the prefill."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
