"""Evaluation against BM25 on raw NQ pools: `evaluator` (`EvalConfig`, `main`), `ranking_metrics`
(MRR, nDCG, recall from the gold's rank; pure functions), `report` (table and PNG) and
`raw_pools` (the same ranking of raw pools at each of the trainer's evaluations). Imports
`cross_encoder.serving` (the `Reranker` that scores), `long_ctx.stage0` (parser, BM25) and
`long_ctx.common`; nothing imports it but the evaluate and training scripts and the demo.
"""
