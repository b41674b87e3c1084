"""Evaluation against BM25 on raw NQ pools: `evaluator` (`EvalConfig`, `main`), `ranking_metrics`
(MRR, nDCG, recall from the gold's rank; pure functions) and `report` (table and PNG). Imports
`cross_encoder.serving` (the `Reranker` that scores), `long_ctx.stage0` (parser, BM25) and
`long_ctx.common`; nothing imports it but the evaluate script and the demo.
"""
