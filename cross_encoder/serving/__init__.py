"""Using a trained cross-encoder: `reranker` (`Reranker`: score, rank, score_many with prefix-state
reuse), `rerank_cli` (the batch CLI over jsonl) and the HTTP server: `server` (FastAPI app speaking
TEI `/rerank` and Cohere/Jina `/v1/rerank`, run by uvicorn), `batcher` (the bounded queue and the
model worker thread that batches documents across requests), `schemas` (request/response bodies),
`serve_config` (its flags). Imports `cross_encoder.modeling`, `cross_encoder.runtime`,
`cross_encoder.cli_flags`, `long_ctx.stage2.rows` (the row format) and `long_ctx.common`.
"""
