"""Evaluate a trained cross-encoder against BM25 on the raw NQ 10-200-document pools: `main(EvalConfig)`.

For every question of the raw file (stage 0's reader and parser; bad lines are counted by reason
and skipped) both systems rank the same pool — all its documents, or the first `max_docs`:

* the cross-encoder scores each (question, document) in the training row format
  (`cross_encoder.serving.reranker.Reranker`, special ids from the adapter's config; a pool
  adapter scores windows of documents in one pass each, in `--doc_order`, see
  `cross_encoder.evaluation.doc_order`);
* BM25 scores with stage 0's implementation and tokenizer (`long_ctx.stage0.bm25`);
* `length`, a baseline that never reads the question: documents by word count (`str.split()`),
  longest first, what a model that learnt stage 0's length shortcut would do.

All rank by descending score, ties to the lower document number, and are summarised by the gold
document's rank (`cross_encoder.evaluation.ranking_metrics`): overall, by the third of the pool the gold sits
in (first / middle / last: "lost in the middle") and by pool size. Results go to a JSON file, a
printed table and a PNG bar chart (`cross_encoder.evaluation.report`).
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import orjson

from cross_encoder.cli_flags import ScoringFlags, check_outputs, model_inputs
from cross_encoder.evaluation.doc_order import DOC_ORDERS, OrderCheck, document_order, score_in_orders
from cross_encoder.evaluation.ranking_metrics import (THIRDS, bucket_order, gold_rank, pool_size_bucket, position_third,
                                                      summarize)
from long_ctx.common.atomic import write_json
from long_ctx.common.cli import flag
from long_ctx.common.line_reader import LineReader
from long_ctx.common.ordered_pool import chunked
from long_ctx.stage0.bm25 import bm25_scores
from long_ctx.stage0.mining import word_count
from long_ctx.stage0.nq_format import NQRecord, SkipRecord, parse_line

SYSTEMS = ("cross_encoder", "bm25", "length")
#: --mode values: what one ranked item is (passage: a document of the pool; window: see windows.py).
EVAL_MODES = ("passage", "window")
#: Skip reasons the evaluator adds to the parser's (`long_ctx.stage0.nq_format.SKIP_REASONS`).
EVAL_SKIP_REASONS = {
    "gold_beyond_max_docs": "the gold document is not among the first --max_docs documents",
}


@dataclass
class EvalConfig(ScoringFlags):
    """The evaluator's settings; each field is also its command-line flag."""

    input_file: str = flag(None, "raw NQ rows, the input format of stage 0 (.jsonl.zst or .jsonl)", required=True)
    limit: int | None = flag(None, "read at most this many input lines")
    max_docs: int | None = flag(None, "rank only the first K documents of each pool (questions whose gold is beyond K are skipped and counted)")
    output_json: str = flag("eval_results.json", "results file")
    output_plot: str | None = flag(None, "bar chart PNG (default: the JSON path with .png)")
    per_question: str | None = flag(None, "optional jsonl with every question's gold ranks and cross-encoder scores")
    bm25_tokenizer: str = flag("words", "BM25 tokens, as in stage 0", choices=("words", "whitespace"))
    pool_window: int | None = flag(None, "pool adapters: documents per scoring pass at most (default: the training K; 0: as many as --max_length holds)")
    doc_order: str = flag("original", "order the documents are scored in (matters for pool adapters): original, bm25 (descending), shuffled (seeded by line number)", choices=DOC_ORDERS)
    order_check: bool = flag(False, "also score every pool in the reverse order; the JSON reports MRR@10 of both and the mean change of the gold's rank (position bias)")
    progress: bool = flag(True, "hide the progress bar", cli_name="no_progress", action="store_false")
    mode: str = flag("passage", "passage: rank each pool's documents; window: rank multi-document windows built as stage 0 --mode window builds them (docs/evaluation.md)", choices=EVAL_MODES)
    context_tokens: int = flag(4096, "--mode window: tokens of the gold window at most (stage 0's --context_tokens)")
    context_tolerance: float = flag(0.05, "--mode window: as stage 0's --context_tolerance")
    num_windows: int = flag(8, "--mode window: windows ranked per question: the gold window and up to M - 1 negative windows")
    gold_position: str = flag("uniform", "--mode window: as stage 0's --gold_position", choices=("uniform", "natural"))
    negative_strategy: str = flag("random", "--mode window: how the negative windows are chosen (stage 0's strategies; random favours neither system)", choices=("least", "hardest", "random"))
    seed: int = flag(0, "--mode window: seed of the windows (as stage 0's --seed) and of their order")

    def validate(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")
        if self.max_docs is not None and self.max_docs < 1:
            raise ValueError(f"--max_docs must be >= 1, got {self.max_docs}")
        if self.pool_window is not None and self.pool_window < 0:
            raise ValueError(f"--pool_window must be >= 0 (0: all documents), got {self.pool_window}")
        if self.question_batch < 1:
            raise ValueError(f"--question_batch must be >= 1, got {self.question_batch}")
        if self.mode not in EVAL_MODES:
            raise ValueError(f"--mode must be one of {', '.join(EVAL_MODES)}, got {self.mode!r}")
        if self.mode == "window":
            from cross_encoder.evaluation.windows import check_window_flags

            check_window_flags(self)
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"--precision must be auto, fp32 or bf16, got {self.precision!r}")
        if Path(self.input_file).is_dir():
            raise FileNotFoundError(f"--input_file {self.input_file} is a folder; pass the raw NQ .jsonl.zst or .jsonl")
        if not Path(self.input_file).is_file():
            raise FileNotFoundError(f"--input_file {self.input_file} not found; pass the raw NQ .jsonl.zst or .jsonl")
        if not Path(self.model_file).is_file():
            raise FileNotFoundError(f"--model_file {self.model_file} not found; pass the base RWKV-5 .pth "
                                    "the adapter was trained on")
        # Checked now, so that a long evaluation never ends without a place for its results.
        check_outputs({"--output_json": self.output_json, "--output_plot": self.plot_path(),
                       "--per_question": self.per_question},
                      [self.input_file, *model_inputs(self.model_file, self.adapter)])

    def plot_path(self) -> Path:
        return Path(self.output_plot) if self.output_plot else Path(self.output_json).with_suffix(".png")


@dataclass
class QuestionResult:
    line_number: int
    pool_size: int
    gold_index: int  # 0-based
    ranks: dict[str, int]  # system -> 1-based gold rank


def iter_pools(reader: LineReader, limit: int | None, max_docs: int | None,
               skipped: collections.Counter) -> Iterator[tuple[int, NQRecord]]:
    """(line number, record with its pool cut to max_docs) for every usable line; counts skips."""
    for line_number, line in reader:
        if limit is not None and line_number >= limit:
            break
        try:
            record = parse_line(line)
        except SkipRecord as exc:
            skipped[exc.reason] += 1
            continue
        if max_docs is not None and len(record.documents) > max_docs:
            if record.gold_id > max_docs:
                skipped["gold_beyond_max_docs"] += 1
                continue
            record.documents = record.documents[:max_docs]
        yield line_number, record


def score_chunk(reranker: Any, chunk: list[tuple[int, NQRecord]], bm25: list[list[float]],
                doc_order: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(the cross-encoder's scores of every pool of `chunk`, in the pool's own document order; the
    order each pool was scored in, `--doc_order`). `bm25`: each pool's BM25 scores. The trainer's
    raw-pool evaluation (`cross_encoder.evaluation.raw_pools`) calls this too."""
    pools = [(rec.question, rec.documents) for _, rec in chunk]
    orders = [document_order(len(rec.documents), b, doc_order, n) for (n, rec), b in zip(chunk, bm25)]
    return score_in_orders(reranker, pools, orders), orders


def question_result(line_number: int, record: NQRecord, scores: dict[str, Any]) -> QuestionResult:
    """One question's gold rank under every system's scores (system -> scores in pool order)."""
    gold = record.gold_id - 1
    return QuestionResult(line_number, len(record.documents), gold, {s: gold_rank(v, gold) for s, v in scores.items()})


def breakdown(results: list[QuestionResult], system: str) -> dict[str, Any]:
    """Overall metrics of one system plus its breakdowns by gold position third and pool size."""
    by_third: dict[str, list[int]] = {t: [] for t in THIRDS}
    by_size: dict[str, list[int]] = collections.defaultdict(list)
    for r in results:
        by_third[position_third(r.gold_index, r.pool_size)].append(r.ranks[system])
        by_size[pool_size_bucket(r.pool_size)].append(r.ranks[system])
    return {
        **summarize(r.ranks[system] for r in results),
        "by_gold_position": {t: summarize(by_third[t]) for t in THIRDS},
        "by_pool_size": {b: summarize(by_size[b]) for b in bucket_order(by_size)},
    }


def main(config: EvalConfig, reranker=None) -> dict[str, Any]:
    """Evaluate; writes the JSON and PNG, prints the table and returns the results dict.

    `reranker` (a `cross_encoder.serving.reranker.Reranker`) skips loading one from model_file/adapter.
    """
    from cross_encoder.evaluation.report import format_table, open_run, plot_results
    from cross_encoder.serving.reranker import QueryCutWarning

    config.validate()
    start = time.perf_counter()
    if reranker is None:
        from cross_encoder.serving.reranker import Reranker

        reranker = Reranker.from_flags(config)
    load_s = time.perf_counter() - start
    if config.mode == "window":
        from cross_encoder.evaluation.windows import evaluate_windows

        return evaluate_windows(config, reranker, iter_pools, start, load_s)
    cut_before = getattr(reranker, "queries_cut", 0)

    reader = LineReader(config.input_file)
    skipped: collections.Counter = collections.Counter()
    results: list[QuestionResult] = []
    seconds = {s: 0.0 for s in SYSTEMS}
    check = OrderCheck(config.doc_order) if config.order_check else None
    check_s = 0.0
    docs_scored = 0
    with contextlib.ExitStack() as stack:
        fh, bar = open_run(stack, config, reader.input_size, "evaluating", QueryCutWarning)  # cut: questions_cut
        for chunk in chunked(iter_pools(reader, config.limit, config.max_docs, skipped), config.question_batch):
            t0 = time.perf_counter()
            bm25 = [bm25_scores(rec.documents, rec.question, config.bm25_tokenizer) for _, rec in chunk]
            t1 = time.perf_counter()
            ce, orders = score_chunk(reranker, chunk, bm25, config.doc_order)
            t2 = time.perf_counter()
            pools = [(rec.question, rec.documents) for _, rec in chunk]
            reverse = score_in_orders(reranker, pools, [o[::-1] for o in orders]) if check else [None] * len(ce)
            seconds["bm25"] += t1 - t0
            seconds["cross_encoder"] += t2 - t1
            check_s += time.perf_counter() - t2
            for (line_number, rec), ce_scores, bm25_pool, rev in zip(chunk, ce, bm25, reverse):
                words = [word_count(d) for d in rec.documents]
                res = question_result(line_number, rec, {"cross_encoder": ce_scores, "bm25": bm25_pool, "length": words})
                gold = res.gold_index
                results.append(res)
                docs_scored += res.pool_size
                line = {"line_number": line_number, "pool_size": res.pool_size, "gold_id": rec.gold_id,
                        "gold_rank": res.ranks, "cross_encoder_scores": ce_scores.tolist()}
                if check:
                    line["gold_rank_reversed_order"] = check.add(ce_scores, rev, gold)
                if fh:
                    fh.write(orjson.dumps(line) + b"\n")
            bar.update(reader.input_bytes - bar.n)
            bar.set_postfix(questions=len(results), refresh=False)
        if not results:  # raised inside the stack: no per-question file is left behind
            reasons = ", ".join(f"{k} {v}" for k, v in skipped.items()) or "the file has no lines"
            raise ValueError(f"no question of {config.input_file} could be evaluated ({reasons}); "
                             "pass the raw NQ multi-document file (the input of stage 0)")

    elapsed = time.perf_counter() - start
    out: dict[str, Any] = {s: breakdown(results, s) for s in SYSTEMS}
    out.update({
        "num_questions": len(results),
        "lines_read": len(results) + sum(skipped.values()),
        "skipped": dict(sorted(skipped.items())),
        "documents_scored": docs_scored,
        # Questions longer than half the row, cut so that documents keep room (docs/evaluation.md).
        "questions_cut": getattr(reranker, "queries_cut", 0) - cut_before,
        "pool_size": {"min": min(r.pool_size for r in results), "max": max(r.pool_size for r in results),
                      "mean": round(docs_scored / len(results), 2)},
        "model": {"model_file": str(config.model_file), "adapter": str(config.adapter),
                  "max_length": reranker.max_length, "sep_token_id": reranker.sep,
                  "cls_token_id": reranker.cls, "pad_token_id": reranker.pad,
                  "device": str(reranker.device), "step": reranker.ce_config.get("step"),
                  "row_format": getattr(reranker, "row_format", "passage"),
                  "pool_window": getattr(reranker, "pool_window", None)},
        "timing": {"load_s": round(load_s, 3), "cross_encoder_s": round(seconds["cross_encoder"], 3),
                   "bm25_s": round(seconds["bm25"], 3), "elapsed_s": round(elapsed, 3),
                   "cross_encoder_docs_per_s": round(docs_scored / max(seconds["cross_encoder"], 1e-9), 1)},
        "config": dataclasses.asdict(config),
        "output_json": str(config.output_json),
        "output_plot": str(config.plot_path()),
    })
    if check:
        out["order_check"] = check.summary()
        out["timing"]["order_check_s"] = round(check_s, 3)
    if config.per_question:
        out["per_question"] = str(config.per_question)
    write_json(config.output_json, out)  # the results first: the plot is only a view of them
    plot_results(out, config.plot_path())
    print(format_table(out))
    if check:
        oc = out["order_check"]
        print(f"order check ({oc['doc_order']} vs reversed): MRR@10 {oc['mrr@10']:.4f} vs {oc['mrr@10_reversed']:.4f}, "
              f"mean |change of the gold's rank| {oc['mean_abs_gold_rank_change']:.2f}")
    if out["questions_cut"]:
        print(f"warning: {out['questions_cut']:,} questions were longer than "
              f"{getattr(reranker, 'max_query_tokens', '?')} tokens (half the row) and only their first tokens "
              "were scored, so that documents keep room (docs/evaluation.md)")
    return out
