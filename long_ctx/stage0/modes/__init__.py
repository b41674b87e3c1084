"""Stage 0's output modes: what one parsed, BM25-scored NQ record becomes (`--mode`).

Every mode is a `Mode` in `MODES`: `build(view, cfg)` turns one record (a `RecordView`: the
parsed record, its BM25 scores and the documents allowed as negatives) into its output JSON
object plus a small per-record `info` dict, or raises `SkipRecord(reason)`; it runs in worker
processes, so it must be a pure function of its arguments (seed with `cfg.seed` and
`view.line_number`, never global state). `new_stats()` makes the main process's aggregator of
those `info` dicts, whose `summary()` is merged into `OUTPUT.stats.json` and whose `lines()` are
printed in the run's summary. Modes import `long_ctx.stage0` (parser, BM25, negatives),
`long_ctx.common` and `long_ctx.world_tokenizer`, never the driver.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

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
}
MODE_NAMES = tuple(MODULES)


def get_mode(name: str) -> Mode:
    if name not in MODULES:
        raise ValueError(f"--mode must be one of {', '.join(MODE_NAMES)}, got {name!r}")
    return importlib.import_module(MODULES[name]).MODE
