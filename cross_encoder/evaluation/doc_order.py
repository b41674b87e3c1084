"""The order in which the evaluator hands a pool's documents to the cross-encoder, and the
position-bias check (`--doc_order`, `--order_check`).

A pool adapter reads a window's documents one after the other, so its scores depend on their
order; a passage adapter's do not. The evaluator scores each pool in `--doc_order`
(`original`: the pool's; `bm25`: descending BM25, ties to the lower document number, what a
first-stage retriever hands over; `shuffled`: seeded by the line number) and maps the scores
back to the pool's document numbers, so ranks and metrics are always about the same documents.
With `--order_check` every pool is scored a second time in the reverse of that order: the
change of the gold's rank measures how much the position of a document moves its score.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from cross_encoder.evaluation.ranking_metrics import gold_rank, summarize

DOC_ORDERS = ("original", "bm25", "shuffled")
# The shuffled order's seed stream (with the line number): fixed, so runs compare.
_SHUFFLE_STREAM = 0x5EED


def document_order(n: int, bm25_scores: Sequence[float], doc_order: str, line_number: int) -> np.ndarray:
    """[n] 0-based pool indices in the order they are scored."""
    if doc_order == "original":
        return np.arange(n)
    if doc_order == "bm25":
        return np.argsort(-np.asarray(bm25_scores, dtype=np.float64), kind="stable")
    if doc_order == "shuffled":
        return np.random.default_rng([_SHUFFLE_STREAM, line_number]).permutation(n)
    raise ValueError(f"--doc_order must be one of {', '.join(DOC_ORDERS)}, got {doc_order!r}")


def score_in_orders(reranker: Any, pools: list[tuple[str, list[str]]], orders: list[np.ndarray]) -> list[np.ndarray]:
    """Scores of every pool's documents, scored in `orders` (one permutation per pool), returned
    in the pool's own document order (float64)."""
    scored = reranker.score_many([(q, [docs[i] for i in order]) for (q, docs), order in zip(pools, orders)])
    out = []
    for s, order in zip(scored, orders):
        back = np.empty(len(order))
        back[order] = np.asarray(s, dtype=np.float64)
        out.append(back)
    return out


class OrderCheck:
    """Gold ranks in the scored order and in its reverse, over the questions evaluated."""

    def __init__(self, doc_order: str) -> None:
        self.doc_order = doc_order
        self.ranks: list[tuple[int, int]] = []

    def add(self, scores: np.ndarray, reversed_scores: np.ndarray, gold: int) -> int:
        """Record one question; returns the gold's rank when its pool was scored reversed."""
        r = gold_rank(reversed_scores, gold)
        self.ranks.append((gold_rank(scores, gold), r))
        return r

    def summary(self) -> dict[str, Any]:
        a = [x for x, _ in self.ranks]
        b = [y for _, y in self.ranks]
        change = float(np.mean(np.abs(np.subtract(a, b)))) if self.ranks else float("nan")
        return {"doc_order": self.doc_order, "n": len(self.ranks),
                "mrr@10": summarize(a)["mrr@10"], "mrr@10_reversed": summarize(b)["mrr@10"],
                "mean_abs_gold_rank_change": change}
