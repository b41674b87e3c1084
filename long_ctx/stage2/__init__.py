"""Stage 2: stage-1 token ids -> fixed-length rows `question [SEP] document [CLS] PAD…`. `rows` is
the row definition (`build_row`, one row; `pack_rows`, a batch with numpy), which the evaluator
and the reranker reuse; `driver` reads stage 1, writes shards, `padding.json`, card and plot
(`Stage2Config`, `main`). Imports `long_ctx.common` only.

The names below are re-exported so `from long_ctx.stage2 import build_row, main` keeps working.
"""
from long_ctx.stage2.driver import Stage2Config, default_output_dir, main
from long_ctx.stage2.rows import OUTPUT_SCHEMA, build_row, pack_rows

__all__ = ["OUTPUT_SCHEMA", "Stage2Config", "build_row", "default_output_dir", "main", "pack_rows"]
