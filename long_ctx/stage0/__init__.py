"""Stage 0: parse the NQ multi-document file (`nq_format`), score each pool with exact BM25
(`bm25/`), choose negatives (`negatives`) and write question/positive/negatives jsonl
(`driver`: `Stage0Config`, `main`). `synthetic_nq` writes the bundled sample in the real format.
Imports `long_ctx.common` and `long_ctx.world_tokenizer` only.
"""
