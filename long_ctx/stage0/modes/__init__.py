"""Stage 0's output modes: what one parsed, BM25-scored NQ record becomes (`--mode`).

Every mode is a `Mode` in `MODES`: `build(view, cfg)` turns one record (a `RecordView`: the
parsed record, its BM25 scores and the documents allowed as negatives) into its output JSON
object plus a small per-record `info` dict, or raises `SkipRecord(reason)`; it runs in worker
processes, so it must be a pure function of its arguments (seed with `cfg.seed` and
`view.line_number`, never global state). `new_stats()` makes the main process's aggregator of
those `info` dicts, whose `summary()` is merged into `OUTPUT.stats.json` and whose `lines()` are
printed in the run's summary. A mode may also define `prepare()`, called once in the main
process before the workers are forked, to load what they then share (e.g. the tokenizer). Modes
import `long_ctx.stage0` (parser, BM25, negatives), `long_ctx.common` and
`long_ctx.world_tokenizer`, never the driver. `view_of` builds a `RecordView` from a parsed
record the way stage 0 does (the evaluator builds its window rows with it too).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from long_ctx.stage0.bm25 import get_tokenizer, index_documents, scores_from_index
from long_ctx.stage0.bm25.codepoints import JoinedDocs
from long_ctx.stage0.negatives import identical_to_positive, negative_candidates
from long_ctx.stage0.nq_format import NQRecord


@dataclass
class RecordView:
    """One usable record as every mode sees it."""

    line_number: int  # 0-based line of the input file
    record: NQRecord
    gold: int  # 0-based index of the gold document in record.documents
    scores: np.ndarray  # [N] float64 BM25 scores of every document for the question
    candidates: np.ndarray  # 0-based, ascending: documents that may be negatives (not the gold,
    # not identical to it, not containing the answer while --filter_answer_docs is on)
    identical: np.ndarray | None = None  # [N] bool: documents other than the gold equal to it up to whitespace
    joined: JoinedDocs | None = None  # the documents joined (word counts for --match_length)


def view_of(line_number: int, record: NQRecord, bm25_tokenizer: str = "words",
            filter_answer_docs: bool = True) -> RecordView:
    """The record as the modes see it: BM25 scores of every document for the question (the pool
    is the corpus) and the documents allowed as negatives."""
    gold = record.gold_id - 1
    joined = JoinedDocs(record.documents)  # shared by BM25 and the answer filter
    index = index_documents(record.documents, bm25_tokenizer, joined)
    scores = scores_from_index(index, get_tokenizer(bm25_tokenizer)(record.question))
    identical = identical_to_positive(record.documents, gold, index.doc_len)
    candidates = negative_candidates(record.documents, gold, record.answer, filter_answer_docs, joined, identical)
    return RecordView(line_number, record, gold, scores, candidates, identical, joined)


class ModeStats(Protocol):
    def add(self, info: dict[str, Any]) -> None: ...
    def summary(self) -> dict[str, Any]: ...
    def lines(self, summary: dict[str, Any]) -> list[str]: ...


class Mode(Protocol):
    name: str

    def build(self, view: RecordView, cfg: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """(output JSON object, info for the stats); raises SkipRecord. info["negatives"] is the
        number of negatives chosen (compared with --num_negatives for the shortfall count)."""
        ...

    def new_stats(self) -> ModeStats: ...


#: --mode name -> the module defining its `MODE` (imported on first use).
MODULES = {
    "passage": "long_ctx.stage0.modes.passage",
    "window": "long_ctx.stage0.modes.window",
    "pool": "long_ctx.stage0.modes.pool",
}
MODE_NAMES = tuple(MODULES)


def get_mode(name: str) -> Mode:
    if name not in MODULES:
        raise ValueError(f"--mode must be one of {', '.join(MODE_NAMES)}, got {name!r}")
    return importlib.import_module(MODULES[name]).MODE
