"""Ranking metrics for pools with exactly one relevant (gold) document, as pure functions.

Everything is defined from the gold document's 1-based rank `r` in a system's ranking:

* MRR@k     = 1 / r if r <= k else 0
* nDCG@k    = 1 / log2(r + 1) if r <= k else 0 (with one relevant document the ideal DCG is 1)
* Recall@k  = 1 if r <= k else 0
* gold rank = r itself (its mean is reported as `mean_gold_rank`)

Per-question values are averaged over questions. Rankings sort by descending score with ties
going to the lower document index, for every system (the same rule as `long_ctx.stage0.bm25`).
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from long_ctx.stage0.bm25 import rank_documents

RECALL_KS = (1, 5, 10)
METRIC_NAMES = ("mrr@10", "ndcg@10", "recall@1", "recall@5", "recall@10", "mean_gold_rank")
THIRDS = ("first", "middle", "last")
# Lower bounds of the pool-size buckets; the last bucket is open-ended.
POOL_SIZE_EDGES = (1, 10, 20, 50, 100, 201)


def gold_rank(scores: Sequence[float] | np.ndarray, gold_index: int) -> int:
    """1-based rank of document `gold_index` (0-based) when ranking by `scores` (ties: lower index first)."""
    if not 0 <= gold_index < len(scores):
        raise IndexError(f"gold_index {gold_index} outside a pool of {len(scores)} documents")
    return rank_documents(scores).index(gold_index) + 1


def reciprocal_rank(rank: int, k: int = 10) -> float:
    """1 / rank when the gold is within the top k, else 0."""
    _check_rank(rank)
    return 1.0 / rank if rank <= k else 0.0


def ndcg(rank: int, k: int = 10) -> float:
    """nDCG@k with a single relevant document: 1 / log2(rank + 1) within the top k, else 0."""
    _check_rank(rank)
    return 1.0 / math.log2(rank + 1) if rank <= k else 0.0


def recall(rank: int, k: int) -> float:
    """1 when the single relevant document is within the top k, else 0."""
    _check_rank(rank)
    return 1.0 if rank <= k else 0.0


def _check_rank(rank: int) -> None:
    if rank < 1:
        raise ValueError(f"ranks are 1-based, got {rank}")


def summarize(ranks: Iterable[int]) -> dict[str, float | int]:
    """Mean metrics over questions from their gold ranks; `n` is the number of questions.

    Metrics are NaN for an empty list (undefined, not zero).
    """
    ranks = [int(r) for r in ranks]
    out: dict[str, float | int] = {"n": len(ranks)}
    if not ranks:
        return {**out, **{name: float("nan") for name in METRIC_NAMES}}
    out["mrr@10"] = float(np.mean([reciprocal_rank(r, 10) for r in ranks]))
    out["ndcg@10"] = float(np.mean([ndcg(r, 10) for r in ranks]))
    for k in RECALL_KS:
        out[f"recall@{k}"] = float(np.mean([recall(r, k) for r in ranks]))
    out["mean_gold_rank"] = float(np.mean(ranks))
    return out


def position_third(gold_index: int, pool_size: int) -> str:
    """Which third of the pool the gold sits in: 'first', 'middle' or 'last' ("lost in the middle").

    Index i (0-based) of n falls in third floor(3 i / n), so 10 documents split 4 / 3 / 3.
    """
    if not 0 <= gold_index < pool_size:
        raise IndexError(f"gold_index {gold_index} outside a pool of {pool_size} documents")
    return THIRDS[3 * gold_index // pool_size]


def pool_size_bucket(pool_size: int, edges: Sequence[int] = POOL_SIZE_EDGES) -> str:
    """Label of the bucket holding `pool_size`, e.g. '10-19', '100-200', or '201+' past the last edge."""
    if pool_size < edges[0]:
        raise ValueError(f"pool size {pool_size} is below the first bucket edge {edges[0]}")
    for lo, hi in zip(edges, edges[1:]):
        if lo <= pool_size < hi:
            return f"{lo}-{hi - 1}"
    return f"{edges[-1]}+"


def bucket_order(labels: Iterable[str]) -> list[str]:
    """Pool-size bucket labels sorted by their lower bound (for tables and plots)."""
    return sorted(set(labels), key=lambda s: int(s.split("-")[0].rstrip("+")))
