"""Stage 1: stage-0 jsonl -> RWKV World token ids in a parquet Hugging Face dataset. `records`
validates and tokenizes chunks of lines (the work of a worker process), `driver` orders, counts and
writes them (`Stage1Config`, `main`), `preload` readies the fork server the workers come from.
Imports `long_ctx.common` and `long_ctx.world_tokenizer` only.

The names below are re-exported so `from long_ctx.stage1 import Stage1Config, main` keeps working.
"""
from long_ctx.stage1.driver import Stage1Config, main
from long_ctx.stage1.records import output_schema

__all__ = ["Stage1Config", "main", "output_schema"]
