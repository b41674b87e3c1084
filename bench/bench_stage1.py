"""Benchmark stage 1 (tokenize stage-0 jsonl into parquet) against a TRIE-based reference, in one run.

Writes a generated stage-0 file under bench/out/ (NQ-like sizes: ~9-word questions, ~100-word
passages with a `(Title: …)` prefix, some accents, CJK and emoji), then runs, each in its own
subprocess (clean peak RSS):
  * reference: json.loads + `rwkv` TRIE_TOKENIZER per string + pa.Table.from_pylist -> parquet,
    single process (what a straightforward stage 1 does);
  * stage 1 with 1 worker process and with all cores;
  * tokenization alone: TRIE vs pyrwkv `encode_batch` on the same strings.
Checks the reference and stage 1 wrote identical ids, and prints a markdown table.

    python bench/bench_stage1.py [--records 20000] [--negatives 1] [--workers N]
"""
import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
ID_COLUMNS = ["question", "answer", "long_answer", "positive", "negative"]

_COMMON = (
    "the of and in to a was is for on as by with that from at its an which were also after during had "
    "first new one two city world war state national team series season film album song river school "
    "university population government president king church company music american british french "
    "released born known located county district century history family north south league club game "
    "between under over second three years since when where who what how many most largest"
).split()
_EXTRA = ["São", "Zürich", "Ångström", "naïve", "café", "Dvořák", "北京", "東京", "😀", "—", "1999", "3.14", "(band)"]


def _words(rng: random.Random, n: int) -> str:
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.75:
            out.append(rng.choice(_COMMON))
        elif r < 0.97:  # names and rare words: several tokens each
            out.append("".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiouy") for _ in range(rng.randint(2, 4))).title())
        else:
            out.append(rng.choice(_EXTRA))
        if rng.random() < 0.08:
            out[-1] += rng.choice([",", ".", ";", ":"])
    return " ".join(out)


def make_qpn(records: int, negatives: int, seed: int = 0) -> Path:
    path = OUT / f"qpn_{records}_{negatives}_{seed}.jsonl"
    if path.exists():
        return path
    OUT.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for i in range(records):
            def passage():
                return f"(Title: {_words(rng, rng.randint(1, 4))}) {_words(rng, rng.randint(60, 140))}"
            negs = [passage() for _ in range(negatives)]
            rec = {"question": _words(rng, rng.randint(6, 12)) + "?", "answer": _words(rng, rng.randint(1, 4)),
                   "long_answer": _words(rng, rng.randint(20, 90)), "positive": passage(), "negative": negs[0],
                   "negatives": negs, "gold_id": rng.randint(1, 50), "negative_ids": list(range(1, negatives + 1)),
                   "num_documents": 50, "line_number": i}
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    tmp.rename(path)
    return path


def _texts(rec: dict) -> list[str]:
    return [rec[c] for c in ID_COLUMNS] + rec["negatives"]


def run_reference(inp: Path, out_dir: Path) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from long_ctx.stage1 import output_schema
    from long_ctx.world_tokenizer import trie_tokenizer

    trie = trie_tokenizer()
    schema = output_schema(False)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()  # vocab loading excluded, as for stage 1's workers
    tokens, n, rows = 0, 0, []
    with open(inp, "rb") as fh, pq.ParquetWriter(out_dir / "ref.parquet", schema) as writer:
        for line in fh:
            rec = json.loads(line)
            row = {c: trie.encode(rec[c]) for c in ID_COLUMNS}
            row["negatives"] = [trie.encode(s) for s in rec["negatives"]]
            row.update({k: rec[k] for k in ("gold_id", "negative_ids", "num_documents", "line_number")})
            tokens += sum(map(len, (row[c] for c in ID_COLUMNS[:-1]))) + sum(map(len, row["negatives"]))
            rows.append(row)
            n += 1
            if len(rows) == 2048:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                rows = []
        if rows:
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
    return {"records": n, "tokens": tokens, "elapsed": time.perf_counter() - start}


def run_stage1(inp: Path, out_dir: Path, workers: int) -> dict:
    from long_ctx.stage1 import Stage1Config, main

    start = time.perf_counter()  # includes starting workers and loading their vocab
    stats = main(Stage1Config(str(inp), str(out_dir), num_proc=workers, progress=False, overwrite=True))
    return {"records": stats["records_written"], "tokens": stats["tokens_encoded"],
            "elapsed": time.perf_counter() - start}


def run_tokenize(inp: Path, which: str) -> dict:
    from long_ctx.world_tokenizer import get_tokenizer, trie_tokenizer

    with open(inp, "rb") as fh:  # the first 10,000 records are plenty for a rate
        texts = [t for line, _ in zip(fh, range(10_000)) for t in _texts(json.loads(line))]
    if which == "trie":
        trie = trie_tokenizer()
        start = time.perf_counter()
        tokens = sum(len(trie.encode(t)) for t in texts)
    else:
        if which == "fast1":
            os.environ["RAYON_NUM_THREADS"] = "1"  # read by rayon when its pool starts
        tok = get_tokenizer()
        start = time.perf_counter()
        tokens = sum(len(x) for i in range(0, len(texts), 1024) for x in tok.encode_batch(texts[i : i + 1024]))
    return {"records": len(texts), "tokens": tokens, "elapsed": time.perf_counter() - start,
            "mb": sum(len(t.encode()) for t in texts) / 1e6}


def child(args) -> None:
    inp = Path(args.input)
    if args.child == "reference":
        res = run_reference(inp, OUT / "s1_reference")
    elif args.child == "stage1":
        res = run_stage1(inp, OUT / f"s1_stage1_{args.workers}", args.workers)
    else:
        res = run_tokenize(inp, args.child)
    from multiprocessing import forkserver

    # Workers are children of stage 1's fork server; stop it and wait for it so that their CPU
    # time and peak RSS show up in RUSAGE_CHILDREN (private API, fine for a benchmark).
    forkserver._forkserver._stop()
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    res["rss_main_mb"], res["rss_child_mb"] = me.ru_maxrss / 1024, kids.ru_maxrss / 1024
    # CPU seconds of the whole run (process + workers, set-up included): less sensitive than wall
    # time to other jobs competing for the cores.
    res["cpu"] = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    print("RESULT " + json.dumps(res))


def measure(inp: Path, mode: str, workers: int = 1) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", mode, "--input", str(inp), "--workers", str(workers)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stderr}")
    return json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))[7:])


def same_ids(a: Path, b: Path) -> bool:
    import pyarrow.parquet as pq

    ta = pq.read_table(sorted(a.glob("*.parquet")), columns=ID_COLUMNS + ["negatives"])
    tb = pq.read_table(sorted(b.glob("*.parquet")), columns=ID_COLUMNS + ["negatives"])
    return ta.num_rows == tb.num_rows and all(
        ta.column(c).to_pylist() == tb.column(c).to_pylist() for c in ID_COLUMNS + ["negatives"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=50_000, help="stage-0 records to generate")
    p.add_argument("--negatives", type=int, default=1, help="negatives per record (stage 0's --num_negatives)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes for the all-cores run")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--input", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    inp = make_qpn(args.records, args.negatives)
    mb = inp.stat().st_size / 1e6
    print(f"input: {inp.name}, {args.records:,} records, {mb:.1f} MB, CPU cores: {os.cpu_count()}, "
          f"load average before: {os.getloadavg()[0]:.1f}\n")
    tok_trie, tok_fast1, tok_fast = measure(inp, "trie"), measure(inp, "fast1"), measure(inp, "fast")
    ref = measure(inp, "reference")
    runs = [("reference: json + TRIE_TOKENIZER + pyarrow, 1 process", ref),
            ("stage 1, 1 worker", measure(inp, "stage1", 1)),
            (f"stage 1, {args.workers} workers", measure(inp, "stage1", args.workers))]
    ok = all(same_ids(OUT / "s1_reference", OUT / f"s1_stage1_{w}") for w in {1, args.workers})

    print("Tokenization alone (strings of the first 10,000 records, one process, vocab loading excluded):\n")
    print("| tokenizer | strings | tokens | wall s | M tokens/s | MB/s | × TRIE (wall) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in (("rwkv TRIE_TOKENIZER", tok_trie), ("pyrwkv encode_batch, 1 thread", tok_fast1),
                    (f"pyrwkv encode_batch, all {os.cpu_count()} cores (rayon)", tok_fast)):
        print(f"| {name} | {r['records']:,} | {r['tokens']:,} | {r['elapsed']:.2f} | {r['tokens'] / r['elapsed'] / 1e6:.2f} "
              f"| {r['mb'] / r['elapsed']:.1f} | {tok_trie['elapsed'] / r['elapsed']:.1f}× |")
    print("\nStage 1 end to end (input file -> parquet dataset):\n")
    print("| variant | wall s | records/s | × reference (wall) | CPU s | × reference (CPU) "
          "| peak RSS main (MB) | peak RSS per worker (MB) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in runs:
        worker = f"{r['rss_child_mb']:.0f}" if r["rss_child_mb"] > 50 else "-"
        print(f"| {name} | {r['elapsed']:.2f} | {r['records'] / r['elapsed']:,.0f} | {ref['elapsed'] / r['elapsed']:.1f}× "
              f"| {r['cpu']:.2f} | {ref['cpu'] / r['cpu']:.1f}× | {r['rss_main_mb']:.0f} | {worker} |")
    print(f"\nidentical token ids in reference and stage 1 outputs: {'yes' if ok else 'NO'}")


if __name__ == "__main__":
    main()
