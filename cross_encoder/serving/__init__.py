"""Using a trained cross-encoder: `reranker` (`Reranker`: score, rank, score_many with prefix-state
reuse) and `rerank_cli` (the batch CLI over jsonl). Imports `cross_encoder.modeling`,
`cross_encoder.runtime`, `long_ctx.stage2.rows` (the row format) and `long_ctx.common`.
"""
