"""`--mode passage` (the default): one gold passage and up to K negative passages per record.

Without a mining flag the output line is what stage 0 has always written (byte for byte):
`question, answer, long_answer, positive, negative (= negatives[0]), negatives, gold_id,
negative_ids, num_documents, line_number`. With one (`--negative_range`, `--max_score_ratio`,
`--negative_mix`, `--match_length`; long_ctx/stage0/mining.py) it also carries `negative_kinds`
and `negative_ranks`, one per negative; an easy negative of a mix has `negative_ids` 0 and rank
null (it comes from another record's pool).
"""
from __future__ import annotations

from typing import Any

from long_ctx.stage0.easy_pool import EasyPool, offers
from long_ctx.stage0.mining import Chosen, MiningSpec, Negative, empty_reason, finish, mine, resolve, word_count
from long_ctx.stage0.modes import RecordView
from long_ctx.stage0.negatives import select_negatives
from long_ctx.stage0.nq_format import SkipRecord


class _NoStats:
    def add(self, info: dict[str, Any]) -> None:
        pass

    def summary(self) -> dict[str, Any]:
        return {}

    def lines(self, summary: dict[str, Any]) -> list[str]:
        return []


def _fill(out: dict[str, Any], info: dict[str, Any], negs: list[Negative]) -> None:
    """Write the negatives into the output line (its keys are already in place) and the info."""
    out["negative"] = negs[0].text if negs else ""
    out["negatives"] = [n.text for n in negs]
    out["negative_ids"] = [n.id for n in negs]
    out["negative_kinds"] = [n.kind for n in negs]
    out["negative_ranks"] = [n.rank for n in negs]
    info.update(negatives=len(negs), negative_words=[n.words for n in negs],
                negative_scores=[0.0 if n.score is None else n.score for n in negs], kinds=out["negative_kinds"])


class PassageMode:
    name = "passage"

    def build(self, view: RecordView, cfg: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        rec, docs = view.record, view.record.documents
        spec = MiningSpec.from_config(cfg)
        if spec.active:
            return self._mined(view, cfg, spec)
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
        info = {"negatives": len(negs), "positive_words": word_count(docs[view.gold]),
                "negative_words": [word_count(docs[i]) for i in negs],
                "positive_score": float(view.scores[view.gold]),
                "negative_scores": [float(view.scores[i]) for i in negs]}
        return out, info

    def _mined(self, view: RecordView, cfg: Any, spec: MiningSpec) -> tuple[dict[str, Any], dict[str, Any]]:
        rec, docs = view.record, view.record.documents
        chosen, f = mine(view, spec, cfg.negative_strategy, cfg.num_negatives, cfg.seed)
        if isinstance(chosen, Chosen) and not chosen.docs:
            raise SkipRecord(empty_reason(f))
        out = {"question": rec.question, "answer": rec.answer, "long_answer": rec.long_answer,
               "positive": docs[view.gold], "negative": None, "negatives": None, "gold_id": rec.gold_id,
               "negative_ids": None, "num_documents": len(docs), "line_number": view.line_number,
               "negative_kinds": None, "negative_ranks": None}
        info: dict[str, Any] = {"positive_words": f.positive_words, "positive_score": float(view.scores[view.gold]),
                                "drops": f.drops, "length_short": f.length_short}
        if isinstance(chosen, Chosen):
            info["shortfall"] = chosen.shortfall
            _fill(out, info, resolve(chosen, lambda d: (docs[d], float(view.scores[d]), word_count(docs[d]))))
        else:  # a mix with easy negatives: finished by the main process (`complete`)
            info["pending"] = chosen
            info["easy_offers"] = offers(docs, view.candidates, cfg.seed, view.line_number)
        return out, info

    def complete(self, out: dict[str, Any], info: dict[str, Any], pool: EasyPool) -> None:
        """Main process, in input order: the easy negatives of a pending mix, then the record's offers."""
        pending = info.pop("pending")
        chosen = finish(pending, pool.pick)
        info["shortfall"] = chosen.shortfall
        _fill(out, info, resolve(chosen, pending.lookup.__getitem__))
        pool.offer(info.pop("easy_offers"))

    def new_stats(self) -> _NoStats:
        return _NoStats()


MODE = PassageMode()
