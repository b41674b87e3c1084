"""Benchmark stage 0 against a straightforward reference, in one run.

Writes a generated input (thousands of records, 10-200 documents of ~100 words) under
bench/out/, then runs, each in its own subprocess (clean peak RSS):
  * reference: json.loads + per-document `re` tokenization + rank_bm25.BM25Okapi per record,
    single process, same parser and negative rule;
  * stage 0 with 1 worker (in-process) and with all cores.
Checks that all variants choose identical negatives, and prints a markdown table.

    python bench/bench_stage0.py [--records 1500] [--workers N]
"""
import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import zstandard

OUT = Path(__file__).resolve().parent / "out"


def make_input(records: int, seed: int) -> Path:
    from long_ctx.synthetic_nq import generate, to_json_line

    path = OUT / f"bench_{records}_{seed}.jsonl.zst"
    if not path.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh, zstandard.ZstdCompressor(level=3).stream_writer(fh) as zw:
            for i, s in enumerate(generate(records, seed, words_per_doc=(70, 130), sample_layout=False)):
                zw.write(to_json_line(s.record, i) + b"\n")
        tmp.rename(path)
    return path


def run_reference(inp: Path, out: Path) -> None:
    import numpy as np
    import rank_bm25

    from long_ctx.nq_format import SkipRecord, parse_text

    word = re.compile(r"\w+")  # same definition as stage 0's `words`: match, then lowercase

    def tokenize(text):
        return [m.lower() for m in word.findall(text)]

    with open(inp, "rb") as fh, open(out, "w") as dst:
        reader = zstandard.ZstdDecompressor().stream_reader(fh)
        for n, line in enumerate(__import__("io").BufferedReader(reader)):
            try:
                row = json.loads(line)
                rec = parse_text(row["text"] if "text" in row else row["prompt"] + row["completion"])
            except (SkipRecord, ValueError, KeyError):
                continue
            scores = rank_bm25.BM25Okapi([tokenize(d) for d in rec.documents]).get_scores(tokenize(rec.question))
            gold = rec.gold_id - 1
            ans = rec.answer.lower()
            cands = [i for i, d in enumerate(rec.documents) if i != gold and not (ans and ans in d.lower())]
            if not cands:
                continue
            neg = min(cands, key=lambda i: (scores[i], i))
            dst.write(json.dumps({"line_number": n, "negative_ids": [neg + 1], "scores_sum": float(np.sum(scores))}) + "\n")


def child(args) -> None:
    start = time.perf_counter()
    if args.child == "reference":
        run_reference(Path(args.input), Path(args.output))
    else:
        from long_ctx.stage0 import Stage0Config, main

        main(Stage0Config(args.input, args.output, num_splits=args.workers, progress=False))
    elapsed = time.perf_counter() - start
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime  # workers included
    print(json.dumps({"elapsed": elapsed, "cpu": cpu, "peak_rss_mb": max(me.ru_maxrss, kids.ru_maxrss) / 1024}))


def negatives_by_line(path: Path) -> dict:
    with open(path, "rb") as fh:
        return {r["line_number"]: r["negative_ids"] for r in map(json.loads, fh)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=1500, help="records in the generated input (default 1500)")
    p.add_argument("--seed", type=int, default=1, help="generator seed (default 1)")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="workers for the all-cores run (default: CPU count)")
    p.add_argument("--child", choices=["reference", "stage0"], help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    inp = make_input(args.records, args.seed)
    size_mb = inp.stat().st_size / 1e6
    with open(inp, "rb") as fh:
        raw_mb = sum(len(c) for c in zstandard.ZstdDecompressor().read_to_iter(fh)) / 1e6
    variants = [("reference (json + rank_bm25, 1 process)", "reference", 1),
                ("stage 0, 1 worker", "stage0", 1),
                (f"stage 0, {args.workers} workers", "stage0", args.workers)]
    rows, outputs = [], []
    for label, kind, workers in variants:
        out = OUT / f"{kind}_{workers}.jsonl"
        cmd = [sys.executable, __file__, "--child", kind, "--workers", str(workers), "--input", str(inp), "--output", str(out)]
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        rows.append((label, workers, res))
        outputs.append(negatives_by_line(out))
    identical = all(o == outputs[0] for o in outputs[1:])
    ref, ref_cpu = rows[0][2]["elapsed"], rows[0][2]["cpu"]
    print(f"Input: {args.records} records, {raw_mb:.0f} MB of JSON ({size_mb:.0f} MB .zst), {os.cpu_count()} CPUs\n")
    print("| variant | records/s | MB/s (uncompressed) | CPU s | peak RSS (MB) | speedup (wall) | speedup per core (CPU time) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, workers, res in rows:
        t, cpu = res["elapsed"], res["cpu"]
        print(f"| {label} | {args.records / t:,.0f} | {raw_mb / t:,.1f} | {cpu:,.1f} | {res['peak_rss_mb']:,.0f} | "
              f"{ref / t:.2f}x | {ref_cpu / cpu:.2f}x |")
    print(f"\nNegatives identical to the reference for all {len(outputs[0])} records: {identical}")
    if not identical:
        sys.exit(1)


if __name__ == "__main__":
    main()
