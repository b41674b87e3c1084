"""Stage 2: stage-1 token ids -> fixed-length rows `question [SEP] document [CLS] PAD...` (see README.md)."""
import argparse

from long_ctx.common.atomic import interrupted_note
from long_ctx.common.cli import run_cli
from long_ctx.stage2 import Stage2Config, main

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ds_dir", required=True, help="stage-1 dataset folder (output of 1_create_datasets.py)")
    p.add_argument("--max_length", type=int, required=True, help="row length L in tokens (>= 3)")
    p.add_argument("--sep_token_id", type=int, default=2, help="id put after the question (0..65535)")
    p.add_argument("--cls_token_id", type=int, default=1, help="id put after the document (0..65535)")
    p.add_argument("--pad_token_id", type=int, default=0, help="id used for right padding (0..65535)")
    p.add_argument("--is_truncate", action=argparse.BooleanOptionalAction, default=True,
                   help="cut too-long rows (document tail, then question tail) instead of dropping "
                        "their whole group (--no-is_truncate); default: truncate")
    p.add_argument("--output_dir", default=None,
                   help="default: beside DS, <DS>_padded_<L>_cls_<c>_sep_<s>_truncate_<T|F>_pad_<p>; must be new, "
                        "empty, or an earlier stage-2 output with --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier output of stage 2 at the output folder (never a folder of other files)")
    p.add_argument("--rows_per_shard", type=int, default=None, help="rows per parquet shard (default: ~256 MB)")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    a = p.parse_args()
    config = Stage2Config(ds_dir=a.ds_dir, max_length=a.max_length, sep_token_id=a.sep_token_id,
                          cls_token_id=a.cls_token_id, pad_token_id=a.pad_token_id, is_truncate=a.is_truncate,
                          output_dir=a.output_dir, rows_per_shard=a.rows_per_shard, progress=not a.no_progress,
                          overwrite=a.overwrite)
    run_cli(main, config, interrupted=lambda: interrupted_note(config.out_path()))
