"""Stage 1: stage-0 qpn jsonl -> RWKV World token ids in a parquet dataset (see README.md)."""
import argparse
import os

from long_ctx.common.atomic import interrupted_note
from long_ctx.common.cli import run_cli
from long_ctx.stage1 import Stage1Config, main

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--input_file", required=True, help="stage-0 output (.jsonl, or .jsonl.zst)")
    p.add_argument("--output_dir", required=True,
                   help="dataset folder to write (atomically); must be new, empty, or an earlier stage-1 output with --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier output of stage 1 at --output_dir (never a folder of other files)")
    p.add_argument("--num_proc", type=int, default=os.cpu_count() or 1,
                   help="tokenizer worker processes (default: CPU count); output is identical for any value")
    p.add_argument("--keep_text", action="store_true",
                   help="also store the original strings as <column>_text columns")
    p.add_argument("--rows_per_shard", type=int, default=100_000, help="records per parquet shard")
    p.add_argument("--row_group_rows", type=int, default=2_048, help="records per parquet row group")
    p.add_argument("--chunk_size", type=int, default=256, help="lines per worker task")
    p.add_argument("--limit", type=int, default=None, help="read at most this many input lines")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    a = p.parse_args()
    run_cli(main, Stage1Config(input_file=a.input_file, output_dir=a.output_dir, num_proc=a.num_proc,
                      keep_text=a.keep_text, rows_per_shard=a.rows_per_shard,
                      row_group_rows=a.row_group_rows, chunk_size=a.chunk_size, limit=a.limit,
                      progress=not a.no_progress, overwrite=a.overwrite),
            interrupted=interrupted_note(a.output_dir))
