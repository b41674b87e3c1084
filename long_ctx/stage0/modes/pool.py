"""`--mode pool`: one row per question holding the gold and K-1 negative documents of its pool.

The documents are chosen as passage mode chooses negatives (`select_negatives`: the strategy,
the answer filter, never a copy of the gold), then put in `--doc_order`: `shuffled` (seeded by
`(seed, line number)`, so the gold's position is uniform over the row), the pool's `original`
order, or descending BM25 (`bm25`, ties to the lower document number: what a first-stage
retriever would hand over). `--pool_docs 0` keeps every usable document of the pool.

Output line: `mode, question, answer, long_answer, documents` (texts in row order), `doc_ids`
(1-based ids in the source pool), `label_index` (0-based position of the gold in `documents`),
`gold_id, bm25_scores` (per document, row order), `num_documents` (of the source pool),
`line_number`, and the settings that made the row, `pool_docs` and `doc_order`, which later
stages record (the trainer puts them in the adapter; the evaluator's window defaults to K).
"""
from __future__ import annotations

import collections
from typing import Any

import numpy as np

from long_ctx.common.lengths import LengthCounter
from long_ctx.stage0.mining import MiningSpec, mine, word_count
from long_ctx.stage0.modes import RecordView
from long_ctx.stage0.negatives import select_negatives

DOC_ORDERS = ("shuffled", "original", "bm25")
#: Bins of the gold position histogram: the gold at row index i of n falls in bin floor(BINS i / n).
POSITION_BINS = 10
# Distinct from the `random` strategy's stream ([seed, line_number]), so the order is not tied
# to which negatives were drawn.
_ORDER_STREAM = 0x9001


def row_order(doc_index: np.ndarray, scores: np.ndarray, doc_order: str, seed: int, line_number: int) -> np.ndarray:
    """The chosen documents' 0-based pool indices (`doc_index`, any order) in row order."""
    idx = np.sort(doc_index)
    if doc_order == "original":
        return idx
    if doc_order == "bm25":
        # Stable over ascending indices: equal scores keep the lower document number first.
        return idx[np.argsort(-scores[idx], kind="stable")]
    if doc_order == "shuffled":
        return idx[np.random.default_rng([seed, line_number, _ORDER_STREAM]).permutation(idx.size)]
    raise ValueError(f"--doc_order must be one of {', '.join(DOC_ORDERS)}, got {doc_order!r}")


class PoolStats:
    """Documents per row and where the gold sits, over the records written."""

    def __init__(self) -> None:
        self.docs = LengthCounter()
        self.bins = [0] * POSITION_BINS
        self.index: collections.Counter = collections.Counter()
        self.fewer = 0

    def add(self, info: dict[str, Any]) -> None:
        n, i = info["row_documents"], info["label_index"]
        self.docs.add(np.array([n]))
        self.bins[POSITION_BINS * i // n] += 1
        self.index[i] += 1
        self.fewer += info["fewer_than_pool_docs"]

    def summary(self) -> dict[str, Any]:
        return {"pool": {
            "documents_per_row": self.docs.summary(),
            # Relative position of the gold: bin b holds rows whose gold index i of n has
            # floor(10 i / n) == b (uniform with --doc_order shuffled).
            "gold_position_histogram": self.bins,
            "gold_index_counts": {str(k): self.index[k] for k in sorted(self.index)},
            "rows_with_fewer_than_pool_docs": self.fewer,
        }}

    def lines(self, stats: dict[str, Any]) -> list[str]:
        pool = stats.get("pool") or {}
        d = pool.get("documents_per_row") or {}
        if not d.get("count"):
            return []
        cfg = stats["config"]
        out = [f"  documents/row    min {d['min']}  mean {d['mean']:.1f}  p50 {d['p50']}  max {d['max']}  "
               f"(--pool_docs {cfg['pool_docs']}, --doc_order {cfg['doc_order']})"]
        index = pool["gold_index_counts"]
        if len(index) <= 16:  # few positions: the counts themselves (tenths of 8 slots leave gaps)
            out.append("  gold index       " + "  ".join(f"{k}:{v}" for k, v in index.items()))
        else:
            out.append("  gold position    " + " ".join(map(str, pool["gold_position_histogram"]))
                       + "  (rows per tenth of the row, first to last)")
        if pool["rows_with_fewer_than_pool_docs"]:
            out.append(f"  rows with fewer than {cfg['pool_docs']} documents (small pools) "
                       f"{pool['rows_with_fewer_than_pool_docs']:,}")
        return out


class PoolMode:
    name = "pool"

    def build(self, view: RecordView, cfg: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        rec, docs = view.record, view.record.documents
        k = int(cfg.pool_docs)
        wanted = len(view.candidates) if k == 0 else k - 1
        spec = MiningSpec.from_config(cfg)
        mined = drops = None
        if spec.active:  # range, margin and length as in passage mode (mining.py); no mix here
            mined, f = mine(view, spec, cfg.negative_strategy, wanted, cfg.seed)
            negs, drops = mined.docs, (f.drops, f.length_short)
        else:
            negs = select_negatives(view.scores, view.candidates, cfg.negative_strategy, wanted, cfg.seed,
                                    view.line_number)
        order = row_order(np.array([view.gold, *negs], dtype=np.int64), view.scores, cfg.doc_order, cfg.seed,
                          view.line_number).tolist()
        label = order.index(view.gold)
        out = {
            "mode": "pool",
            "question": rec.question,
            "answer": rec.answer,
            "long_answer": rec.long_answer,
            "documents": [docs[i] for i in order],
            "doc_ids": [i + 1 for i in order],
            "label_index": label,
            "gold_id": rec.gold_id,
            "bm25_scores": [float(view.scores[i]) for i in order],
            "num_documents": len(docs),
            "line_number": view.line_number,
            "pool_docs": k,
            "doc_order": cfg.doc_order,
        }
        info = {"negatives": len(negs), "row_documents": len(order), "label_index": label,
                "fewer_than_pool_docs": k > 0 and len(order) < k, "positive_words": word_count(docs[view.gold]),
                "negative_words": [word_count(docs[i]) for i in negs]}
        if mined is not None:
            # One per negative, in row order (the documents other than the gold).
            kind_of = dict(zip(mined.docs, zip(mined.kinds, mined.ranks)))
            out["negative_kinds"] = [kind_of[i][0] for i in order if i != view.gold]
            out["negative_ranks"] = [kind_of[i][1] for i in order if i != view.gold]
            info.update(kinds=out["negative_kinds"], drops=drops[0], length_short=drops[1])
        return out, info

    def new_stats(self) -> PoolStats:
        return PoolStats()


MODE = PoolMode()
