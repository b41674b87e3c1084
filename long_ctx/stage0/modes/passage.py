"""`--mode passage` (the default): one gold passage and up to K negative passages per record.

The output line is what stage 0 has always written (byte for byte):
`question, answer, long_answer, positive, negative (= negatives[0]), negatives, gold_id,
negative_ids, num_documents, line_number`.
"""
from __future__ import annotations

from typing import Any

from long_ctx.stage0.modes import RecordView
from long_ctx.stage0.negatives import select_negatives


class _NoStats:
    def add(self, info: dict[str, Any]) -> None:
        pass

    def summary(self) -> dict[str, Any]:
        return {}

    def lines(self, summary: dict[str, Any]) -> list[str]:
        return []


class PassageMode:
    name = "passage"

    def build(self, view: RecordView, cfg: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        rec, docs = view.record, view.record.documents
        negs = select_negatives(view.scores, view.candidates, cfg.negative_strategy, cfg.num_negatives, cfg.seed,
                                view.line_number)
        out = {
            "question": rec.question,
            "answer": rec.answer,
            "long_answer": rec.long_answer,
            "positive": docs[view.gold],
            "negative": docs[negs[0]],
            "negatives": [docs[i] for i in negs],
            "gold_id": rec.gold_id,
            "negative_ids": [i + 1 for i in negs],
            "num_documents": len(docs),
            "line_number": view.line_number,
        }
        return out, {"negatives": len(negs)}

    def new_stats(self) -> _NoStats:
        return _NoStats()


MODE = PassageMode()
