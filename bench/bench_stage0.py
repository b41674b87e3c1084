"""Benchmark stage 0 against a straightforward reference, in one run.

Writes a generated input (thousands of records, 10-200 documents of ~100 words each) under
bench/out/, then measures:

1. Full runs, each in its own subprocess (clean peak RSS): the reference (json + per-document
   `re` tokenization + rank_bm25.BM25Okapi per record, single process, same parser and
   negative rule), stage 0 with 1 worker (in-process) and with all cores. Wall time, CPU time
   (workers included; measured after imports) and peak RSS; all variants must choose identical
   negatives.
2. Per-record work, interleaved: the reference's and stage 0's per-record functions alternate
   on the same chunks of records, CPU time, best of several rounds. On a shared machine this is
   the number least disturbed by other processes.

3. With `--big_line MB`: the peak memory one huge input line costs (a record of that many MB in
   a few shapes: ASCII text carried twice as in the real file, ASCII in two giant passages, CJK
   text), as peak RSS above the process's size before the line, against the line's own size.
4. With `--window T`: `--mode window --context_tokens T` next to passage mode on the same input,
   in the same run (full runs in subprocesses, 1 worker and all cores), and the per-record CPU of
   both interleaved, with the share of the window work spent counting tokens (encoding every
   document, then the chosen windows once more).

    python bench/bench_stage0.py [--records 1500] [--workers N]
    python bench/bench_stage0.py --big_line 50
    python bench/bench_stage0.py --window 4096
    python bench/bench_stage0.py --mining

5. With `--mining`: the mining flags (issue 15: rank range, score margin, easy:medium:hard mix,
   length matching, export formats) next to plain passage mode with the same --num_negatives, on
   the same input, in the same run: full runs in subprocesses (1 worker and all cores), then
   per-record CPU interleaved per variant (worker work plus the main process's share: the easy
   negatives of a mix and encoding).
"""
import argparse
import io
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import rank_bm25
import zstandard

from long_ctx.stage0.nq_format import SkipRecord, parse_text

OUT = Path(__file__).resolve().parent / "out"
_WORD = re.compile(r"\w+")  # same definition as stage 0's `words`: match, then lowercase


def generated_lines(records: int, seed: int, text: str):
    """JSON rows of the chosen generator (`--text`)."""
    if text == "realistic":
        from realistic_nq import generate_lines  # (bench/ is this script's folder)

        return generate_lines(records, seed)
    from long_ctx.stage0.synthetic_nq import generate, to_json_line

    return (to_json_line(s.record, i) for i, s in
            enumerate(generate(records, seed, words_per_doc=(70, 130), sample_layout=False)))


def make_input(records: int, seed: int, text: str = "realistic") -> Path:
    path = OUT / f"bench_{text}_{records}_{seed}.jsonl.zst"
    if not path.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh, zstandard.ZstdCompressor(level=3).stream_writer(fh) as zw:
            for line in generated_lines(records, seed, text):
                zw.write(line + b"\n")
        tmp.rename(path)
    return path


def reference_record(line: bytes):
    """The straightforward version: json, rank_bm25, Python lists. Returns the 1-based negative."""
    def tokenize(text):
        return [m.lower() for m in _WORD.findall(text)]

    try:
        row = json.loads(line)
        rec = parse_text(row["text"] if "text" in row else row["prompt"] + row["completion"])
    except (SkipRecord, ValueError, KeyError):
        return None
    scores = rank_bm25.BM25Okapi([tokenize(d) for d in rec.documents]).get_scores(tokenize(rec.question))
    gold, answer = rec.gold_id - 1, rec.answer.lower()
    cands = [i for i, d in enumerate(rec.documents) if i != gold and not (answer and answer in d.lower())]
    return min(cands, key=lambda i: (scores[i], i)) + 1 if cands else None


def run_reference(inp: Path, out: Path) -> None:
    with open(inp, "rb") as fh, open(out, "w") as dst:
        lines = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(fh))
        for n, line in enumerate(lines):
            neg = reference_record(line)
            if neg is not None:
                dst.write(json.dumps({"line_number": n, "negative_ids": [neg]}) + "\n")


def cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def child(args) -> None:
    from long_ctx.stage0.driver import Stage0Config, main

    start, cpu0 = time.perf_counter(), cpu_seconds()
    if args.child == "reference":
        run_reference(Path(args.input), Path(args.output))
    else:
        extra = dict(mode="window", context_tokens=args.window, num_negatives=3) if args.child == "window" else {}
        if args.child in MINING_VARIANTS:
            extra = MINING_VARIANTS[args.child]
        main(Stage0Config(args.input, args.output, num_splits=args.workers, progress=False, **extra))
    elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"elapsed": elapsed, "cpu": cpu, "peak_rss_mb": max(me.ru_maxrss, kids.ru_maxrss) / 1024}))


def negatives_by_line(path: Path) -> dict:
    with open(path, "rb") as fh:
        return {r["line_number"]: r["negative_ids"] for r in map(json.loads, fh)}


def interleaved(inp: Path, n_records: int, rounds: int = 5, chunk: int = 10) -> tuple[float, float]:
    """CPU ms per record (reference, stage 0), best of `rounds` per chunk, chunks alternating."""
    from long_ctx.common.line_reader import iter_lines
    from long_ctx.stage0.driver import Stage0Config, process_line

    lines = [line for _, (_, line) in zip(range(n_records), iter_lines(inp))]
    cfg = Stage0Config(str(inp), "unused", progress=False)
    chunks = [list(enumerate(lines))[i:i + chunk] for i in range(0, len(lines), chunk)]
    best_ref = [float("inf")] * len(chunks)
    best_s0 = [float("inf")] * len(chunks)
    for _ in range(rounds):
        for k, part in enumerate(chunks):
            t = time.process_time()
            for _n, line in part:
                reference_record(line)
            best_ref[k] = min(best_ref[k], time.process_time() - t)
            t = time.process_time()
            for n, line in part:
                process_line(n, line, cfg)
            best_s0[k] = min(best_s0[k], time.process_time() - t)
    return sum(best_ref) / len(lines) * 1e3, sum(best_s0) / len(lines) * 1e3


BIG_LINE_SHAPES = {
    "ascii_200_docs_text_twice": "ASCII words, 200 passages, `text` + `prompt`/`completion` (the real layout)",
    "ascii_2_giant_docs": "ASCII words, 2 passages of half the line each, `text` only",
    "cjk_200_docs": "CJK words (20,000-word vocabulary, some emoji), 200 passages, `text` only",
}


def big_line(shape: str, mb: float) -> bytes:
    """One JSON row of about `mb` MB in the NQ format (plain Python, seeded)."""
    import random

    from long_ctx.stage0.nq_format import NQRecord, render_text

    rng = random.Random(0)
    twice = shape.endswith("text_twice")
    if shape.startswith("cjk"):
        chars = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)] + ["😀", "é"]
        vocab = ["".join(rng.choices(chars, k=rng.randint(1, 4))) for _ in range(20_000)]
        bytes_per_word = 8.5  # ~2.5 characters of 3 UTF-8 bytes, plus a space
    else:
        vocab = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(5000)]
        bytes_per_word = 6.5
    n_docs = 2 if "2_giant" in shape else 200
    words = int(mb * 1e6 / (2 if twice else 1) / bytes_per_word / n_docs)
    docs = [" ".join(rng.choices(vocab, k=words)) for _ in range(n_docs)]
    text = render_text(NQRecord(" ".join(vocab[:6]), vocab[7], "a long answer", docs, 1), "Read these.")
    row = {"text": text, "prompt": text[:-30], "completion": text[-30:]} if twice else {"text": text}
    return json.dumps(row, ensure_ascii=False).encode()


def big_line_child(path: str) -> None:
    from long_ctx.stage0.driver import Stage0Config, process_line

    cfg = Stage0Config(path, "unused", progress=False)
    line = Path(path).read_bytes()
    process_line(0, b'{"text": "warm-up"}', cfg)
    statm = Path("/proc/self/statm").read_text().split()
    before_mb = int(statm[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20  # resident now, the line included
    start = time.perf_counter()
    result = process_line(0, line, cfg)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"line_mb": len(line) / 2**20, "extra_mb": peak_mb - before_mb, "seconds": time.perf_counter() - start,
                      "skip": result[2]}))


def run_big_line(mb: float) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"One {mb:g} MB line through stage 0's per-line work (`process_line`, as in a worker), "
          "peak RSS above the process before the line\n")
    print("| line | line MB | extra peak RSS MB | x line | seconds |")
    print("|---|---:|---:|---:|---:|")
    for shape, label in BIG_LINE_SHAPES.items():
        path = OUT / f"big_line_{shape}_{mb:g}.jsonl"
        path.write_bytes(big_line(shape, mb))
        res = subprocess.run([sys.executable, __file__, "--child", "big_line", "--input", str(path)],
                             check=True, capture_output=True, text=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"| {label} | {r['line_mb']:.1f} | {r['extra_mb']:,.0f} | {r['extra_mb'] / r['line_mb']:.1f}x | "
              f"{r['seconds']:.1f} |")
        path.unlink()


def window_interleaved(inp: Path, n_records: int, context_tokens: int, rounds: int = 3,
                       chunk: int = 10) -> dict[str, float]:
    """CPU ms per record: passage mode, window mode, and the window mode's token counting (its
    first call per record encodes the documents, the second the chosen windows)."""
    import long_ctx.stage0.modes.window as window
    from long_ctx.common.line_reader import iter_lines
    from long_ctx.stage0.driver import Stage0Config, process_line

    spent = {"documents": 0.0, "windows": 0.0}
    calls = [0]
    count_tokens = window.count_tokens

    def timed(texts):
        t = time.process_time()
        try:
            return count_tokens(texts)
        finally:
            spent["documents" if calls[0] == 0 else "windows"] += time.process_time() - t
            calls[0] += 1

    window.count_tokens = timed
    lines = [line for _, (_, line) in zip(range(n_records), iter_lines(inp))]
    passage = Stage0Config(str(inp), "unused", progress=False, num_negatives=3)
    win = Stage0Config(str(inp), "unused", progress=False, num_negatives=3, mode="window",
                       context_tokens=context_tokens)
    window.MODE.prepare()
    chunks = [list(enumerate(lines))[i:i + chunk] for i in range(0, len(lines), chunk)]
    keys = ("passage", "window", "documents", "windows")
    best = {k: [float("inf")] * len(chunks) for k in keys}
    for _ in range(rounds):
        for k, part in enumerate(chunks):
            for name, cfg in (("passage", passage), ("window", win)):
                spent.update(documents=0.0, windows=0.0)
                t = time.process_time()
                for n, line in part:
                    calls[0] = 0
                    process_line(n, line, cfg)
                elapsed = time.process_time() - t
                if elapsed < best[name][k]:
                    best[name][k] = elapsed
                    if name == "window":
                        best["documents"][k], best["windows"][k] = spent["documents"], spent["windows"]
    window.count_tokens = count_tokens
    return {k: sum(best[k]) / len(lines) * 1e3 for k in keys}


def run_window(args, inp: Path, raw_mb: float) -> None:
    variants = [("passage mode, 1 worker", "stage0", 1), ("window mode, 1 worker", "window", 1),
                (f"passage mode, {args.workers} workers", "stage0", args.workers),
                (f"window mode, {args.workers} workers", "window", args.workers)]
    rows = []
    for label, kind, workers in variants:
        out = OUT / f"{kind}_{workers}.jsonl"
        cmd = [sys.executable, __file__, "--child", kind, "--workers", str(workers), "--window", str(args.window),
               "--input", str(inp), "--output", str(out)]
        res = subprocess.run(cmd, check=True, capture_output=True, text=True)
        stats = json.loads(Path(f"{out}.stats.json").read_text())
        rows.append((label, json.loads(res.stdout.strip().splitlines()[-1]), stats))
    ms = window_interleaved(inp, args.interleaved_records, args.window)
    p_ms, w_ms, c_ms = ms["passage"], ms["window"], ms["documents"] + ms["windows"]
    print(f"Input: {args.records} records, 10-200 documents each, {raw_mb:.0f} MB of JSON; {os.cpu_count()} CPUs; "
          f"window mode --context_tokens {args.window} --num_negatives 3 (passage: --num_negatives 3)\n")
    print("| variant | records/s (lines read) | MB/s (JSON) | records written | CPU s | peak RSS (MB) | "
          "wall vs passage (same workers) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for i, (label, res, stats) in enumerate(rows):
        t = res["elapsed"]
        ref = rows[i - 1 if i % 2 else i][1]["elapsed"]
        print(f"| {label} | {args.records / t:,.0f} | {raw_mb / t:,.1f} | {stats['records_written']:,} | "
              f"{res['cpu']:,.1f} | {res['peak_rss_mb']:,.0f} | {t / ref:.2f}x |")
    w = rows[1][2]
    print(f"\nPer-record CPU, interleaved, best of 3 ({args.interleaved_records} records): passage {p_ms:.2f} ms, "
          f"window {w_ms:.2f} ms ({w_ms / p_ms:.2f}x), of which counting tokens {c_ms:.2f} ms "
          f"({100 * c_ms / w_ms:.0f} % of the window work: documents {ms['documents']:.2f} ms, "
          f"confirming the chosen windows {ms['windows']:.2f} ms)")
    print(f"\nWindow mode skipped {w['records_skipped']} records: {w['skipped_by_reason']}; positive - negative tokens "
          f"{w['positive_minus_negative_tokens']}")


MINING_K = 4
#: --mining variants: Stage0Config keywords (plain = the reference, same K).
MINING_VARIANTS = {
    "plain": dict(num_negatives=MINING_K),
    "range_margin": dict(num_negatives=MINING_K, negative_range="2-100", max_score_ratio=0.95,
                         negative_strategy="random"),
    "mix": dict(num_negatives=MINING_K, negative_mix="5:3:2"),
    "match_length": dict(num_negatives=MINING_K, match_length=0.2),
    "all": dict(num_negatives=MINING_K, negative_range="2-100", max_score_ratio=0.95, negative_mix="5:3:2",
                match_length=0.2),
    "all_flag_embedding": dict(num_negatives=MINING_K, negative_range="2-100", max_score_ratio=0.95,
                               negative_mix="5:3:2", match_length=0.2, output_format="flag_embedding"),
}
MINING_LABELS = {
    "plain": f"plain passage mode, --num_negatives {MINING_K} (reference)",
    "range_margin": "--negative_range 2-100 --max_score_ratio 0.95 --negative_strategy random",
    "mix": "--negative_mix 5:3:2",
    "match_length": "--match_length 0.2",
    "all": "all four: range, margin, mix, match_length",
    "all_flag_embedding": "all four + --output_format flag_embedding",
}


def mining_interleaved(inp: Path, n_records: int, rounds: int = 5, chunk: int = 10) -> dict[str, float]:
    """CPU ms per record of every MINING_VARIANTS entry, best of `rounds` per chunk, variants
    alternating on each chunk; includes the main process's share (mix completion, encoding)."""
    from long_ctx.common.line_reader import iter_lines
    from long_ctx.stage0.driver import Stage0Config, process_line
    from long_ctx.stage0.easy_pool import EasyPool
    from long_ctx.stage0.export import encode
    from long_ctx.stage0.modes.passage import MODE

    lines = [line for _, (_, line) in zip(range(n_records), iter_lines(inp))]
    cfgs = {k: Stage0Config(str(inp), "unused", progress=False, **v) for k, v in MINING_VARIANTS.items()}
    chunks = [list(enumerate(lines))[i:i + chunk] for i in range(0, len(lines), chunk)]
    best = {k: [float("inf")] * len(chunks) for k in cfgs}
    for _ in range(rounds):
        pools = {k: EasyPool(0) for k in cfgs}  # fresh per round: every round does the same work
        for c, part in enumerate(chunks):
            for name, cfg in cfgs.items():
                t = time.process_time()
                for n, line in part:
                    _, payload, _, _, _, info = process_line(n, line, cfg)
                    if payload is not None and "pending" in info:
                        MODE.complete(payload, info, pools[name])
                        encode(cfg.output_format, payload, info)
                best[name][c] = min(best[name][c], time.process_time() - t)
    return {k: sum(v) / len(lines) * 1e3 for k, v in best.items()}


def run_mining(args, inp: Path, raw_mb: float) -> None:
    full = [("plain", 1), ("all", 1), ("plain", args.workers), ("all", args.workers)]
    rows = []
    for kind, workers in full:
        out = OUT / f"mining_{kind}_{workers}.jsonl"
        cmd = [sys.executable, __file__, "--child", kind, "--workers", str(workers), "--input", str(inp),
               "--output", str(out)]
        res = subprocess.run(cmd, check=True, capture_output=True, text=True)
        stats = json.loads(Path(f"{out}.stats.json").read_text())
        rows.append((kind, workers, json.loads(res.stdout.strip().splitlines()[-1]), stats))
    same = all((OUT / f"mining_{k}_1.jsonl").read_bytes() == (OUT / f"mining_{k}_{args.workers}.jsonl").read_bytes()
               for k in ("plain", "all"))
    ms = mining_interleaved(inp, args.interleaved_records)
    print(f"Input: {args.records} records, 10-200 documents each, {raw_mb:.0f} MB of JSON; {os.cpu_count()} CPUs\n")
    print("| variant | workers | records/s | CPU s | peak RSS (MB) | records/s vs plain (same workers) |")
    print("|---|---:|---:|---:|---:|---:|")
    for i, (kind, workers, res, stats) in enumerate(rows):
        ref = rows[i - 1 if i % 2 else i][2]["elapsed"]
        print(f"| {MINING_LABELS[kind]} | {workers} | {args.records / res['elapsed']:,.0f} | {res['cpu']:,.1f} | "
              f"{res['peak_rss_mb']:,.0f} | {ref / res['elapsed']:.2f}x |")
    print(f"\nPer-record CPU, interleaved, best of 5 ({args.interleaved_records} records):\n")
    print("| variant | ms per record | records/s per core | vs plain |")
    print("|---|---:|---:|---:|")
    for k, v in ms.items():
        print(f"| {MINING_LABELS[k]} | {v:.3f} | {1e3 / v:,.0f} | {ms['plain'] / v:.2f}x |")
    w = rows[1][3]
    print(f"\n1 and {args.workers} workers byte-identical (plain and all): {same}; all four: positive_longer_share "
          f"{w['words']['positive_longer_share']} (plain: {rows[0][3]['words']['positive_longer_share']}), "
          f"negatives by kind {w['mining']['negatives_by_kind']}")
    if not same:
        sys.exit(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=1500, help="records in the generated input (default 1500)")
    p.add_argument("--seed", type=int, default=1, help="generator seed (default 1)")
    p.add_argument("--text", choices=["realistic", "synthetic"], default="realistic",
                   help="realistic: Wikipedia-like passages (bench/realistic_nq.py: ~100k-word Zipfian vocabulary, "
                        "names, numbers, non-ASCII); synthetic: the bundled sample's generator (default realistic)")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="workers for the all-cores run (default: CPU count)")
    p.add_argument("--interleaved_records", type=int, default=300, help="records for the interleaved per-record measurement (default 300)")
    p.add_argument("--big_line", type=float, default=None, metavar="MB",
                   help="instead: measure the peak memory of one line of about MB megabytes, in several shapes")
    p.add_argument("--window", type=int, default=None, metavar="T",
                   help="instead: window mode with --context_tokens T next to passage mode, same input and run")
    p.add_argument("--mining", action="store_true",
                   help="instead: the mining flags (range, margin, mix, match_length, export) next to plain passage mode")
    p.add_argument("--child", choices=["reference", "stage0", "window", "big_line", *MINING_VARIANTS],
                   help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child == "big_line":
        return big_line_child(args.input)
    if args.child:
        return child(args)
    if args.big_line:
        return run_big_line(args.big_line)

    inp = make_input(args.records, args.seed, args.text)
    size_mb = inp.stat().st_size / 1e6
    with open(inp, "rb") as fh:
        raw_mb = sum(len(c) for c in zstandard.ZstdDecompressor().read_to_iter(fh)) / 1e6
    if args.window:
        return run_window(args, inp, raw_mb)
    if args.mining:
        return run_mining(args, inp, raw_mb)
    variants = [("reference (json + rank_bm25, 1 process)", "reference", 1),
                ("stage 0, 1 worker", "stage0", 1),
                (f"stage 0, {args.workers} workers", "stage0", args.workers)]
    rows, outputs = [], []
    for label, kind, workers in variants:
        out = OUT / f"{kind}_{workers}.jsonl"
        cmd = [sys.executable, __file__, "--child", kind, "--workers", str(workers),
               "--input", str(inp), "--output", str(out)]
        res = subprocess.run(cmd, check=True, capture_output=True, text=True)
        rows.append((label, workers, json.loads(res.stdout.strip().splitlines()[-1])))
        outputs.append(negatives_by_line(out))
    identical = all(o == outputs[0] for o in outputs[1:])
    ref_ms, s0_ms = interleaved(inp, args.interleaved_records)

    ref, ref_cpu = rows[0][2]["elapsed"], rows[0][2]["cpu"]
    print(f"Input: {args.records} {args.text} records, 10-200 documents each, {raw_mb:.0f} MB of JSON "
          f"({size_mb:.0f} MB .zst); {os.cpu_count()} CPUs\n")
    print("| variant | records/s | MB/s (JSON) | CPU s | peak RSS (MB) | speedup (wall) | speedup per CPU second |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, workers, res in rows:
        t, cpu = res["elapsed"], res["cpu"]
        print(f"| {label} | {args.records / t:,.0f} | {raw_mb / t:,.1f} | {cpu:,.1f} | "
              f"{res['peak_rss_mb']:,.0f} | {ref / t:.2f}x | {ref_cpu / cpu:.2f}x |")
    print(f"\nPer-record work, interleaved, best of 5 ({args.interleaved_records} records): reference "
          f"{ref_ms:.2f} ms, stage 0 {s0_ms:.2f} ms of CPU per record -> {ref_ms / s0_ms:.2f}x per core")
    print(f"\nNegatives identical to the reference for all {len(outputs[0])} written records: {identical}")
    if not identical:
        sys.exit(1)


if __name__ == "__main__":
    main()
