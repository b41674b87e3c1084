"""Window evaluation (`2_evaluate_ce.py --mode window`): find the window that holds the gold
document among windows of the same length, cross-encoder against BM25.

For every question of the raw file, stage 0's own construction
(`long_ctx.stage0.modes.window.build_windows`, same seed and line number, so the same windows as
`0_create_q_p_n.py --mode window`) builds one gold window of (1 - tol) x T .. T tokens and up to
M - 1 negative windows within +- tol of its length. The M windows are put in a seeded random order
(so that ties, e.g. equal scores, favour no window) and ranked by both systems:

* the cross-encoder scores each window as one document in the training row format;
* BM25 scores the M windows as a corpus of M documents (stage 0's implementation and tokenizer).

Metrics follow from the gold window's rank (`ranking_metrics`): MRR (no cut-off), Recall@1, the
mean gold-window rank and the rest of `summarize`, overall and by where the gold sits inside its
window (`gold_position` in the first / middle / last third: the "needle position" view).
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import time
from typing import Any, Callable, Iterator

import numpy as np
import orjson

from cross_encoder.evaluation.ranking_metrics import THIRDS, gold_rank, summarize
from cross_encoder.evaluation.report import LABELS, _fmt, open_run, plot_panels
from long_ctx.common.atomic import write_json
from long_ctx.common.line_reader import LineReader
from long_ctx.common.ordered_pool import chunked
from long_ctx.stage0.bm25 import bm25_scores
from long_ctx.stage0.modes import view_of
from long_ctx.stage0.modes.window import WindowSpec, build_windows
from long_ctx.stage0.nq_format import NQRecord, SkipRecord

SYSTEMS = ("cross_encoder", "bm25")
METRICS = ("mrr", "recall@1", "mean_gold_rank", "mrr@10", "ndcg@10", "recall@5")
BAR_METRICS = ("mrr", "recall@1", "recall@5")


def check_window_flags(config) -> None:
    if config.context_tokens < 1:
        raise ValueError(f"--context_tokens must be >= 1, got {config.context_tokens}")
    if not 0 <= config.context_tolerance < 1:
        raise ValueError(f"--context_tolerance must be in [0, 1), got {config.context_tolerance}")
    if config.num_windows < 2:
        raise ValueError(f"--num_windows must be >= 2 (the gold window and at least one other), got {config.num_windows}")
    if config.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {config.seed}")


def window_spec(config) -> WindowSpec:
    """Stage 0's construction with the evaluator's flags (answer documents never in a negative)."""
    return WindowSpec(config.context_tokens, config.context_tolerance, config.gold_position,
                      config.num_windows - 1, config.negative_strategy, config.seed, filter_answer_docs=True)


@dataclasses.dataclass
class WindowQuestion:
    line_number: int
    question: str
    texts: list[str]  # the windows, in evaluation order
    doc_ids: list[list[int]]  # 1-based document ids of each window
    tokens: list[int]  # each window's tokens
    gold_index: int  # 0-based position of the gold window in `texts`
    gold_position: float  # the gold's offset inside its window, 0..1


def iter_window_questions(pools: Iterator[tuple[int, NQRecord]], config, skipped: collections.Counter
                          ) -> Iterator[WindowQuestion]:
    """The windows of every usable record of `pools` ((line number, record)); skips counted by reason."""
    spec = window_spec(config)
    for line_number, rec in pools:
        try:
            w = build_windows(view_of(line_number, rec, config.bm25_tokenizer, True), spec)
        except SkipRecord as exc:
            skipped[exc.reason] += 1
            continue
        texts, ids, tokens = [w.positive, *w.negatives], [w.positive_docs, *w.negative_docs], \
            [w.positive_tokens, *w.negative_tokens]
        order = np.random.default_rng([config.seed, line_number, 2]).permutation(len(texts)).tolist()
        yield WindowQuestion(line_number, rec.question, [texts[i] for i in order],
                             [[d + 1 for d in ids[i]] for i in order], [tokens[i] for i in order],
                             order.index(0), w.gold_position)


def needle_third(gold_position: float) -> str:
    """first / middle / last: the third of its window the gold's first token is in."""
    return THIRDS[min(2, int(gold_position * 3))]


def breakdown(ranks: list[int], thirds: list[str]) -> dict[str, Any]:
    """Metrics of one system: summarize() plus MRR without cut-off, overall and by needle third."""
    def metrics(rs: list[int]) -> dict[str, Any]:
        return {**summarize(rs), "mrr": float(np.mean([1 / r for r in rs])) if rs else float("nan")}

    return {**metrics(ranks),
            "by_needle_position": {t: metrics([r for r, th in zip(ranks, thirds) if th == t]) for t in THIRDS}}


def evaluate_windows(config, reranker, iter_pools: Callable[..., Iterator[tuple[int, NQRecord]]],
                     start: float, load_s: float) -> dict[str, Any]:
    """Evaluate on windows (`evaluator.main` with `--mode window`, after it checked the flags and
    loaded the reranker at `start`, in `load_s`); writes the JSON and PNG, prints the table and
    returns the results. `iter_pools` is the evaluator's reader of raw records (limit, max_docs,
    skips by reason)."""
    from cross_encoder.serving.reranker import QueryCutWarning, max_query_tokens
    from long_ctx.world_tokenizer import get_tokenizer

    cut_before = getattr(reranker, "queries_cut", 0)
    reader = LineReader(config.input_file)
    skipped: collections.Counter = collections.Counter()
    ranks: dict[str, list[int]] = {s: [] for s in SYSTEMS}
    thirds: list[str] = []
    n_windows: list[int] = []
    seconds = {s: 0.0 for s in SYSTEMS}
    windows_cut = 0
    with contextlib.ExitStack() as stack:
        fh, bar = open_run(stack, config, reader.input_size, "evaluating windows", QueryCutWarning)
        pools = iter_pools(reader, config.limit, config.max_docs, skipped)
        for chunk in chunked(iter_window_questions(pools, config, skipped), config.question_batch):
            t0 = time.perf_counter()
            bm25 = [bm25_scores(q.texts, q.question, config.bm25_tokenizer) for q in chunk]
            t1 = time.perf_counter()
            ce = reranker.score_many([(q.question, q.texts) for q in chunk])
            seconds["bm25"] += t1 - t0
            seconds["cross_encoder"] += time.perf_counter() - t1
            for q, ce_scores, bm25_scores_ in zip(chunk, ce, bm25):
                rank = {"cross_encoder": gold_rank(ce_scores, q.gold_index),
                        "bm25": gold_rank(bm25_scores_, q.gold_index)}
                for s in SYSTEMS:
                    ranks[s].append(rank[s])
                thirds.append(needle_third(q.gold_position))
                n_windows.append(len(q.texts))
                # Windows the row cannot hold whole lose their tail (as in training).
                q_len = min(len(get_tokenizer().encode(q.question)), max_query_tokens(reranker.max_length))
                windows_cut += sum(q_len + n + 2 > reranker.max_length for n in q.tokens)
                if fh:
                    fh.write(orjson.dumps({
                        "line_number": q.line_number, "num_windows": len(q.texts), "gold_window": q.gold_index,
                        "gold_position": q.gold_position, "gold_rank": rank, "window_doc_ids": q.doc_ids,
                        "window_tokens": q.tokens, "cross_encoder_scores": ce_scores,
                        "bm25_scores": [float(x) for x in bm25_scores_]}) + b"\n")
            bar.update(reader.input_bytes - bar.n)
            bar.set_postfix(questions=len(thirds), refresh=False)
        if not thirds:
            reasons = ", ".join(f"{k} {v}" for k, v in skipped.items()) or "the file has no lines"
            raise ValueError(f"no question of {config.input_file} gave windows of {config.context_tokens} tokens "
                             f"({reasons}); pass the raw NQ multi-document file, or a smaller --context_tokens")
    elapsed = time.perf_counter() - start
    scored = sum(n_windows)
    out: dict[str, Any] = {s: breakdown(ranks[s], thirds) for s in SYSTEMS}
    out.update({
        "mode": "window",
        "num_questions": len(thirds),
        "lines_read": len(thirds) + sum(skipped.values()),
        "skipped": dict(sorted(skipped.items())),
        "windows_scored": scored,
        "windows_per_question": {"min": min(n_windows), "max": max(n_windows), "mean": round(scored / len(n_windows), 2)},
        "questions_with_fewer_windows": sum(n < config.num_windows for n in n_windows),
        "windows_cut": windows_cut,
        "questions_cut": getattr(reranker, "queries_cut", 0) - cut_before,
        "model": {"model_file": str(config.model_file), "adapter": str(config.adapter),
                  "max_length": reranker.max_length, "device": str(reranker.device),
                  "step": reranker.ce_config.get("step")},
        "timing": {"load_s": round(load_s, 3), "cross_encoder_s": round(seconds["cross_encoder"], 3),
                   "bm25_s": round(seconds["bm25"], 3), "elapsed_s": round(elapsed, 3),
                   "cross_encoder_windows_per_s": round(scored / max(seconds["cross_encoder"], 1e-9), 2)},
        "config": dataclasses.asdict(config),
        "output_json": str(config.output_json),
        "output_plot": str(config.plot_path()),
    })
    if config.per_question:
        out["per_question"] = str(config.per_question)
    write_json(config.output_json, out)
    plot_window_results(out, config.plot_path())
    print(format_window_table(out))
    if windows_cut:
        print(f"warning: {windows_cut:,} windows did not fit the row of {reranker.max_length} tokens with their question "
              "and lost their tail; pass --max_length (RWKV has no position limit) or a smaller --context_tokens")
    return out


def format_window_table(res: dict[str, Any]) -> str:
    ce, bm = res["cross_encoder"], res["bm25"]
    cfg = res["config"]
    head = f"{'':24s}{LABELS['cross_encoder']:>13s}{LABELS['bm25']:>13s}{'CE - BM25':>13s}"
    w = res["windows_per_question"]
    lines = [f"window evaluation on {res['num_questions']:,} questions: {w['min']}-{w['max']} windows of "
             f"~{cfg['context_tokens']} tokens each ({res['windows_scored']:,} windows)", head, "-" * len(head)]
    for m in METRICS:
        lines.append(f"{m:24s}{_fmt(ce[m])}{_fmt(bm[m])}{_fmt(ce[m] - bm[m])}")
    lines += ["", f"{'MRR by needle position':24s}{LABELS['cross_encoder']:>13s}{LABELS['bm25']:>13s}{'questions':>13s}"]
    for t in THIRDS:
        c, b = ce["by_needle_position"][t], bm["by_needle_position"][t]
        lines.append(f"{t + ' third':24s}{_fmt(c['mrr'])}{_fmt(b['mrr'])}{_fmt(c['n'])}")
    if res.get("skipped"):
        lines += ["", "skipped lines: " + ", ".join(f"{k} {v:,}" for k, v in res["skipped"].items())]
    t = res["timing"]
    lines.append(f"cross-encoder {t['cross_encoder_s']:.1f} s ({t['cross_encoder_windows_per_s']:,.1f} windows/s), "
                 f"BM25 {t['bm25_s']:.1f} s, total {t['elapsed_s']:.1f} s")
    lines.append(f"results: {res['output_json']}  plot: {res['output_plot']}")
    return "\n".join(lines)


def plot_window_results(res: dict[str, Any], path: str | os.PathLike) -> None:
    """Two panels of grouped bars, cross-encoder vs BM25: overall, and MRR by needle position."""
    ce = res["cross_encoder"]
    panels = [
        ("overall", list(BAR_METRICS), lambda s, k: res[s][k], list(BAR_METRICS)),
        ("MRR by needle position (third of the gold window)", list(THIRDS),
         lambda s, k: res[s]["by_needle_position"][k]["mrr"],
         [f"{k}\nn={ce['by_needle_position'][k]['n']}" for k in THIRDS]),
    ]
    w = res["windows_per_question"]
    plot_panels(panels, path, f"Finding the gold window among {w['min']}-{w['max']} windows of "
                f"~{res['config']['context_tokens']} tokens, {res['num_questions']:,} questions", [3, 3], (10, 4.5))
