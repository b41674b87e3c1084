"""Benchmark stage 2 (padded cross-encoder rows) against a straightforward reference, in one run.

Builds a stage-1 dataset once from bench_stage1's generated stage-0 file (default 20,000 records
with 4 negatives = 100,000 rows), then for each max_length runs, each in its own subprocess (clean
peak RSS):
  * reference: per record `to_pylist`, rows as Python lists (question + [SEP] + doc + [CLS] +
    padding), `pa.Table.from_pylist` -> parquet (zstd), single process, on the first
    --ref_records records (it is slow; its rate is what is compared);
  * stage 2 on the whole dataset.
Checks the reference's rows equal the first rows of stage 2, and prints a markdown table.

    python bench/bench_stage2.py [--records 20000] [--negatives 4] [--max_lengths 512 2048]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench_stage1 import OUT, make_qpn

SEP, CLS, PAD = 2, 1, 0


def stage1_dir(records: int, negatives: int) -> Path:
    out = OUT / f"s2_input_{records}_{negatives}"
    if not (out / "stats.json").exists():
        from long_ctx.stage1 import Stage1Config, main

        main(Stage1Config(str(make_qpn(records, negatives)), str(out), progress=False))
    return out


def run_reference(ds: Path, L: int, limit: int, out: Path) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from long_ctx.stage2 import OUTPUT_SCHEMA

    start = time.perf_counter()
    rows, n, seen = [], 0, 0
    out.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(out / "ref.parquet", OUTPUT_SCHEMA, compression="zstd") as writer:
        for shard in sorted(ds.glob("train-*.parquet")):
            for batch in pq.ParquetFile(shard).iter_batches(columns=["question", "positive", "negatives"]):
                for rec in batch.to_pylist():
                    if seen == limit:
                        break
                    for j, doc in enumerate([rec["positive"], *rec["negatives"]]):
                        q = rec["question"]
                        real = q + [SEP] + doc + [CLS]
                        if len(real) > L:
                            q = q[: L - 2]
                            real = q + [SEP] + doc[: L - 2 - len(q)] + [CLS]
                        rows.append({"input_ids": real + [PAD] * (L - len(real)), "labels": int(j == 0),
                                     "length": len(real), "group": seen})
                    seen += 1
                    if len(rows) >= 2048:
                        writer.write_table(pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA))
                        n += len(rows)
                        rows = []
        if rows:
            writer.write_table(pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA))
            n += len(rows)
    return {"rows": n, "elapsed": time.perf_counter() - start}


def run_stage2(ds: Path, L: int, out: Path) -> dict:
    from long_ctx.stage2 import Stage2Config, main

    start = time.perf_counter()
    s = main(Stage2Config(str(ds), L, SEP, CLS, PAD, is_truncate=True, output_dir=str(out), progress=False,
                        overwrite=True))
    return {"rows": s["num_rows"], "elapsed": time.perf_counter() - start, "pad_fraction": s["pad_fraction"]}


def child(args) -> None:
    ds, L = Path(args.ds), args.max_lengths[0]
    if args.child == "reference":
        res = run_reference(ds, L, args.ref_records, OUT / f"s2_reference_{L}")
    else:
        res = run_stage2(ds, L, OUT / f"s2_stage2_{L}")
    me = resource.getrusage(resource.RUSAGE_SELF)
    res["rss_mb"] = me.ru_maxrss / 1024
    res["cpu"] = me.ru_utime + me.ru_stime
    print("RESULT " + json.dumps(res))


def measure(mode: str, ds: Path, L: int, ref_records: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", mode, "--ds", str(ds), "--max_lengths", str(L),
                           "--ref_records", str(ref_records)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stderr}")
    return json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))[7:])


def reference_matches(L: int) -> bool:
    import pyarrow.parquet as pq

    ref = pq.read_table(OUT / f"s2_reference_{L}" / "ref.parquet")
    ours = pq.read_table(sorted((OUT / f"s2_stage2_{L}").glob("train-*.parquet"))).slice(0, ref.num_rows)
    return all(ref.column(c).to_numpy(zero_copy_only=False).tolist() == ours.column(c).to_numpy(zero_copy_only=False).tolist()
               for c in ("labels", "length", "group")) and \
        ref.column("input_ids").combine_chunks().flatten().equals(ours.column("input_ids").combine_chunks().flatten())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=20_000, help="stage-1 records (groups) to generate")
    p.add_argument("--negatives", type=int, default=4, help="negatives per record (rows per group - 1)")
    p.add_argument("--max_lengths", type=int, nargs="+", default=[512, 2048], help="row lengths L to measure")
    p.add_argument("--ref_records", type=int, default=3_000, help="records the (slow) reference processes")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--ds", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    ds = stage1_dir(args.records, args.negatives)
    print(f"stage-1 input: {ds.name}, {args.records:,} records x {1 + args.negatives} rows, "
          f"CPU cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.1f}\n")
    print("| variant | L | rows | wall s | rows/s | × reference (rows/s) | CPU s | rows per CPU s | peak RSS (MB) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    checks = []
    for L in args.max_lengths:
        ref = measure("reference", ds, L, args.ref_records)
        ours = measure("stage2", ds, L, args.ref_records)
        for name, r in ((f"reference (Python lists, first {args.ref_records:,} records)", ref), ("stage 2", ours)):
            rate = r["rows"] / r["elapsed"]
            print(f"| {name} | {L} | {r['rows']:,} | {r['elapsed']:.2f} | {rate:,.0f} "
                  f"| {rate / (ref['rows'] / ref['elapsed']):.1f}× | {r['cpu']:.2f} | {r['rows'] / r['cpu']:,.0f} "
                  f"| {r['rss_mb']:.0f} |")
        checks.append(reference_matches(L))
    print(f"\nreference rows identical to stage 2's first rows: {'yes' if all(checks) else 'NO'}")


if __name__ == "__main__":
    main()
