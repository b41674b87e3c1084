"""Stage 0: NQ multi-document rows -> one (question, positive, negatives) JSON line per record.

For every input row: parse it, score all of its documents against the question with BM25, find
the documents that may serve as negatives, and let the `--mode` (`long_ctx.stage0.modes`) build
the output record from them. Records stream through in input order; workers
process batches of lines and the main process writes their results in order, so the output
bytes do not depend on the number of workers. A worker that dies (the out-of-memory killer)
ends the run at once with an error; the output exists only once the input was read to its end.
"""
from __future__ import annotations

import collections
import contextlib
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator

import numpy as np

from long_ctx.common.atomic import write_json
from long_ctx.common.cli import flag
from long_ctx.common.line_reader import InputFileError, LineReader, check_input_file
from long_ctx.common.ordered_pool import ordered_imap
from long_ctx.common.progress import progress_bar
from long_ctx.stage0.bm25 import TOKENIZERS
from long_ctx.stage0.easy_pool import EasyPool
from long_ctx.stage0.export import OUTPUT_FORMATS, check_output, encode, open_sink, stats_path
from long_ctx.stage0.mining import MiningSpec, MiningStats, WordStats, mining_lines, validate_mining, word_lines
from long_ctx.stage0.modes import MODE_NAMES, get_mode, view_of
from long_ctx.stage0.modes.pool import DOC_ORDERS
from long_ctx.stage0.modes.window import GOLD_POSITIONS
from long_ctx.stage0.negatives import STRATEGIES
from long_ctx.stage0.nq_format import SkipRecord, parse_line

# A task sent to a worker is up to BATCH_LINES lines or BATCH_BYTES of input: big enough to
# amortise IPC, small enough to balance. At most TASKS_IN_FLIGHT_PER_WORKER tasks per worker
# and IN_FLIGHT_BYTES of input are queued at once, so memory stays flat on any input size.
BATCH_LINES = 16
BATCH_BYTES = 4 << 20
TASKS_IN_FLIGHT_PER_WORKER = 3
IN_FLIGHT_BYTES = 96 << 20
# Workers are forked from the main process: it runs no Arrow or tokenizer thread pools a fork
# could copy mid-operation (only tqdm's idle monitor, which workers never touch), and forking
# skips the fork server's start-up (measured: a 480-line run took 0.86 s forked, 1.44 s from a fork
# server).
START_METHOD = "fork"
#: The mining flags each mode honours (others are refused), and the output formats it writes.
MODE_MINING_FLAGS = {
    "passage": ("negative_range", "max_score_ratio", "negative_mix", "match_length"),
    "pool": ("negative_range", "max_score_ratio", "match_length"),
    "window": ("max_score_ratio",),
}
MODE_FORMATS = {"passage": OUTPUT_FORMATS, "pool": OUTPUT_FORMATS, "window": ("native",)}
#: Why a mode cannot honour a flag (the error says so).
_WHY_NOT = {
    ("pool", "negative_mix"): "a pool row holds one question's own pool, so it has no easy negatives of other records",
    ("window", "negative_range"): "window negatives are runs of documents chosen by their best document",
    ("window", "negative_mix"): "window negatives are runs of the record's own documents",
    ("window", "match_length"): "windows are already matched to the positive's tokens by --context_tolerance",
    ("window", "output_format"): "a window row has no one BM25 score per negative",
}


@dataclass
class Stage0Config:
    """Stage 0's settings; each field is also its command-line flag (`long_ctx.common.cli.flag`)."""

    input_file: str = flag(None, "NQ rows: .jsonl.zst (streamed) or .jsonl; a pipe (e.g. /dev/stdin) is read as .jsonl", required=True)
    output_file: str = flag(None, "output .jsonl (or .jsonl.zst: zstd-compressed), written atomically; stats go to OUTPUT.stats.json", required=True)
    num_splits: int = flag(0, "worker processes (0 = one per CPU); output is identical for any value")
    negative_strategy: str = flag("least", "least: lowest BM25 score; hardest: highest; random: seeded by (seed, line number)", choices=STRATEGIES)
    num_negatives: int = flag(1, "negatives per record, best first by the strategy")
    seed: int = flag(0, "seed for everything random (--negative_strategy random, ...)")
    bm25_tokenizer: str = flag("words", "words: lowercased Unicode \\w+ matches; whitespace: str.split()", choices=tuple(TOKENIZERS))
    filter_answer_docs: bool = flag(True, "never use a document containing the answer (case-insensitive) as a negative")
    mode: str = flag("passage", "what each record becomes (see docs/stage0.md): passage = the gold passage + negative passages; window = multi-document windows of --context_tokens tokens; pool = one row of the gold + K-1 negative documents", choices=MODE_NAMES)
    context_tokens: int = flag(4096, "--mode window: RWKV World tokens of the positive window at most (it has at least (1 - tolerance) x this)")
    context_tolerance: float = flag(0.05, "--mode window: the positive has (1 - t) x context_tokens .. context_tokens tokens; each negative is within +-t of its positive")
    gold_position: str = flag("uniform", "--mode window: uniform = the gold's offset in its window spread uniformly over [0, 1) (seeded); natural = as in the pool's own order", choices=GOLD_POSITIONS)
    pool_docs: int = flag(0, "--mode pool: documents per row, the gold + K-1 negatives chosen by --negative_strategy (0 = every usable document of the pool)")
    doc_order: str = flag("shuffled", "--mode pool: order of a row's documents: shuffled (seeded by seed and line number), original (the pool's), bm25 (descending score)", choices=DOC_ORDERS)
    negative_range: str | None = flag(None, "A-B: negatives only among the candidates ranked A..B by BM25 (1-based, inclusive, the gold not counted; FlagEmbedding's --range_for_sampling 2-200 is about 2-199 here); the strategy then picks inside the range", metavar="A-B")
    max_score_ratio: float | None = flag(None, "R in (0, 1]: drop candidates whose BM25 score is >= R x the gold's (a guard against unlabelled positives, like sentence-transformers' relative_margin = 1 - R)", metavar="R")
    negative_mix: str | None = flag(None, "E:M:H: --num_negatives split in this ratio (largest remainders): hard = hardest in --negative_range, medium = random from the record's pool, easy = random documents of earlier records (docs/stage0.md); replaces --negative_strategy", metavar="E:M:H")
    match_length: float | None = flag(None, "TOL: negatives only among candidates whose word count (str.split()) is within +-TOL x the positive's, so that length does not give the label away (e.g. 0.2)", metavar="TOL")
    output_format: str = flag("native", "native: stage 0's jsonl (what stages 1-2 read); flag_embedding: FlagEmbedding's {query, pos, neg, pos_scores, neg_scores} jsonl; sentence_transformers: a parquet dataset folder (query, positive, negative_1..K) at --output_file", choices=OUTPUT_FORMATS)
    limit: int | None = flag(None, "read at most this many input lines")
    progress: bool = flag(True, "hide the progress bar", cli_name="no_progress", action="store_false")

    def validate(self) -> None:
        if not self.input_file or not self.output_file:
            raise ValueError("--input_file and --output_file are required")
        get_mode(self.mode)  # raises on an unknown mode
        if self.negative_strategy not in STRATEGIES:
            raise ValueError(f"--negative_strategy must be one of {STRATEGIES}")
        if self.bm25_tokenizer not in TOKENIZERS:
            raise ValueError(f"--bm25_tokenizer must be one of {sorted(TOKENIZERS)}")
        if self.num_negatives < 1:
            raise ValueError("--num_negatives must be at least 1")
        if self.seed < 0:
            raise ValueError("--seed must be a non-negative integer")
        if self.pool_docs < 0 or self.pool_docs == 1:
            raise ValueError(f"--pool_docs must be 0 (every usable document) or >= 2 (the gold and at least one "
                             f"negative), got {self.pool_docs}")
        if self.doc_order not in DOC_ORDERS:
            raise ValueError(f"--doc_order must be one of {', '.join(DOC_ORDERS)}")
        if self.num_splits < 0:
            raise ValueError("--num_splits must be >= 1 (or 0 for one per CPU)")
        if self.limit is not None and self.limit < 0:
            raise ValueError("--limit must be >= 0")
        if self.context_tokens < 1:
            raise ValueError(f"--context_tokens must be >= 1, got {self.context_tokens}")
        if not 0 <= self.context_tolerance < 1:
            raise ValueError(f"--context_tolerance must be in [0, 1), got {self.context_tolerance}")
        if self.gold_position not in GOLD_POSITIONS:
            raise ValueError(f"--gold_position must be one of {', '.join(GOLD_POSITIONS)}, got {self.gold_position!r}")
        validate_mining(self)
        for name in ("negative_range", "max_score_ratio", "negative_mix", "match_length"):
            if getattr(self, name) is not None and name not in MODE_MINING_FLAGS[self.mode]:
                raise ValueError(f"--{name} does not apply to --mode {self.mode}: {_WHY_NOT[self.mode, name]}")
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"--output_format must be one of {', '.join(OUTPUT_FORMATS)}")
        if self.output_format not in MODE_FORMATS[self.mode]:
            raise ValueError(f"--output_format {self.output_format} does not apply to --mode {self.mode}: "
                             f"{_WHY_NOT[self.mode, 'output_format']}")
        if self.output_format == "sentence_transformers" and self.mode == "pool" and self.pool_docs == 0:
            raise ValueError("--output_format sentence_transformers needs a fixed number of negatives per row: "
                             "give --pool_docs K (K - 1 negative columns)")

    def check_paths(self) -> None:
        """Before any work: the input can be read, the outputs can be written and hit no input."""
        check_input_file(self.input_file)
        check_output(self.output_file, self.output_format, self.input_file)

    def negatives_per_row(self) -> int:
        """K of the sentence_transformers columns negative_1..K."""
        return self.pool_docs - 1 if self.mode == "pool" else self.num_negatives


#: Skip reason of a record the sentence_transformers format cannot hold (its negative_1..K columns).
FEWER_THAN_COLUMNS = "fewer_negatives_than_columns"

# (line_number, what the sink writes (`export.encode`; the output object itself while the main
# process still has to finish it) or None, skip reason or None, documents in the record (0 if it
# did not parse), documents left out as identical to the positive, the mode's per-record info)
Result = tuple[int, object, "str | None", int, int, "dict | None"]


def process_line(line_number: int, line: bytes, cfg: Stage0Config) -> Result:
    """One input line -> its output JSON line (with b"\\n"), or the reason it was skipped."""
    rec = None
    n_identical = 0
    try:
        rec = parse_line(line)
        view = view_of(line_number, rec, cfg.bm25_tokenizer, cfg.filter_answer_docs)
        n_identical = int(view.identical.sum())
        out, info = get_mode(cfg.mode).build(view, cfg)
    except SkipRecord as skip:
        # A record that parsed but gives no output still counts its documents (and duplicates).
        n_docs = len(rec.documents) if rec is not None else 0
        return line_number, None, skip.reason, n_docs, n_identical if rec is not None else 0, None
    payload = out if "pending" in info else encode(cfg.output_format, out, info)
    return line_number, payload, None, len(rec.documents), n_identical, info


_worker_cfg: Stage0Config | None = None


def _init_worker(cfg: Stage0Config) -> None:
    global _worker_cfg
    _worker_cfg = cfg


def _process_batch(batch: list[tuple[int, bytes]]) -> list[Result]:
    return [process_line(n, line, _worker_cfg) for n, line in batch]


def _batches(lines: Iterable[tuple[int, bytes]]) -> Iterator[list[tuple[int, bytes]]]:
    """Worker tasks: up to BATCH_LINES lines, cut early once they hold BATCH_BYTES of input."""
    batch: list[tuple[int, bytes]] = []
    size = 0
    for item in lines:
        batch.append(item)
        size += len(item[1])
        if len(batch) == BATCH_LINES or size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _batch_bytes(batch: list[tuple[int, bytes]]) -> int:
    return sum(len(line) for _, line in batch)


def _results(lines: Iterable[tuple[int, bytes]], cfg: Stage0Config, workers: int) -> Iterator[Result]:
    if workers == 1:
        for n, line in lines:
            yield process_line(n, line, cfg)
        return
    # Memory stays flat on any input: at most TASKS_IN_FLIGHT_PER_WORKER tasks per worker and
    # IN_FLIGHT_BYTES of input are outstanding (one line larger than that goes alone); results
    # come back in submission (= input) order.
    pool = ordered_imap(_process_batch, _batches(lines), workers,
                        max_in_flight=workers * TASKS_IN_FLIGHT_PER_WORKER, initializer=_init_worker,
                        initargs=(cfg,), weight=_batch_bytes, max_weight=IN_FLIGHT_BYTES,
                        start_method=START_METHOD)
    with contextlib.closing(pool):
        for results in pool:
            yield from results


def _limited(reader: LineReader, limit: int | None) -> Iterator[tuple[int, bytes]]:
    for n, line in reader:
        if limit is not None and n >= limit:
            return
        yield n, line


def _doc_summary(counts: collections.Counter) -> dict:
    if not counts:
        return {"records": 0}
    values = np.array(sorted(counts), dtype=np.int64)
    weights = np.array([counts[v] for v in values.tolist()], dtype=np.int64)
    expanded = np.repeat(values, weights)
    return {
        "records": int(weights.sum()),
        "min": int(values[0]),
        "mean": round(float(expanded.mean()), 3),
        "p50": float(np.percentile(expanded, 50)),
        "p90": float(np.percentile(expanded, 90)),
        "max": int(values[-1]),
        "total": int(expanded.sum()),
    }


def main(cfg: Stage0Config) -> dict:
    """Run stage 0; returns the stats dict (also written to OUT.stats.json, or OUT/stats.json for a
    sentence_transformers folder)."""
    cfg.validate()
    cfg.check_paths()
    workers = cfg.num_splits or os.cpu_count() or 1
    reader = LineReader(cfg.input_file)
    skipped: collections.Counter = collections.Counter()
    docs_per_record: collections.Counter = collections.Counter()
    lines_read = written = short = identical = 0
    mode = get_mode(cfg.mode)
    mode_stats = mode.new_stats()
    words = WordStats()
    mining = MiningStats() if MiningSpec.from_config(cfg).active else None
    easy = EasyPool(cfg.seed)  # used only by a --negative_mix with easy negatives
    if hasattr(mode, "prepare"):
        mode.prepare()  # before the workers are forked: they share what it loads
    start = time.perf_counter()
    bar = progress_bar(
        total=reader.input_size, unit="B", unit_scale=True, unit_divisor=1024,
        desc="stage 0", disable=not cfg.progress, mininterval=0.5,
    )
    try:
        with bar, open_sink(cfg.output_file, cfg.output_format, cfg.negatives_per_row()) as sink, \
                contextlib.closing(_results(_limited(reader, cfg.limit), cfg, workers)) as results:
            # (closing: on an error or Ctrl-C the worker pool stops here, before the temp file goes)
            for _n, payload, reason, n_docs, n_identical, info in results:
                lines_read += 1
                identical += n_identical
                if payload is not None and "pending" in info:
                    # In input order, whatever the workers: the easy negatives of a mix.
                    mode.complete(payload, info, easy)
                    if info["negatives"] == 0:
                        payload, reason = None, "no_negative_after_filters"
                    else:
                        payload = encode(cfg.output_format, payload, info)
                if payload is None:
                    skipped[reason] += 1
                elif not sink.write(payload):
                    skipped[FEWER_THAN_COLUMNS] += 1
                else:
                    written += 1
                    docs_per_record[n_docs] += 1
                    short += info["negatives"] < cfg.num_negatives
                    mode_stats.add(info)
                    words.add(info["positive_words"], info["negative_words"])
                    if mining is not None:
                        mining.add(info)
                if bar.n != reader.input_bytes:
                    bar.update(reader.input_bytes - bar.n)
                    rate = lines_read / max(time.perf_counter() - start, 1e-9)
                    bar.set_postfix_str(f"{written:,} records, {rate:,.0f} records/s", refresh=False)
            elapsed = time.perf_counter() - start
            stats = {
                "input_file": str(cfg.input_file),
                "output_file": str(cfg.output_file),
                "config": asdict(cfg),
                "mode": cfg.mode,
                "output_format": cfg.output_format,
                "workers": workers,
                "lines_read": lines_read,
                "records_written": written,
                "records_skipped": sum(skipped.values()),
                # Written, but with fewer than --num_negatives negatives (not enough candidates).
                "records_with_fewer_negatives": short,
                # Documents never used as negatives because their text equals the positive's once
                # whitespace is normalised (pools repeat passages).
                "negatives_identical_to_positive_skipped": identical,
                "skipped_by_reason": dict(sorted(skipped.items())),
                "documents_per_record": _doc_summary(docs_per_record),
                "elapsed_s": round(elapsed, 3),
                "input_bytes": reader.input_bytes,
                "records_per_s": round(lines_read / elapsed, 1) if elapsed > 0 else None,
                "input_mb_per_s": round(reader.input_bytes / 1e6 / elapsed, 2) if elapsed > 0 else None,
                **words.summary(),
                **(mining.summary() if mining is not None else {}),
                **mode_stats.summary(),
            }
            if sink.folder:
                # sentence_transformers: no row for a record with fewer than K negatives.
                stats["records_dropped_fewer_negatives"] = sink.dropped
                sink.finish(stats)  # shards, stats.json and the card, inside the folder being written
    except InputFileError as exc:
        raise InputFileError(
            f"{exc}\n{written:,} records had been processed from {lines_read:,} lines; "
            f"nothing was written to {cfg.output_file} (it is only created when the input "
            f"is read to its end)."
        ) from exc
    if not sink.folder:
        write_json(stats_path(cfg.output_file), stats)
    return stats


def print_summary(stats: dict, file=sys.stdout) -> None:
    """The one-screen summary printed at the end of a run."""
    docs = stats["documents_per_record"]
    lines = [
        f"stage 0 done in {stats['elapsed_s']:.1f} s with {stats['workers']} worker(s): "
        f"{stats['records_per_s']} records/s, {stats['input_mb_per_s']} MB/s of input file",
        f"  lines read       {stats['lines_read']:,}",
        f"  records written  {stats['records_written']:,}  -> {stats['output_file']}",
        f"  records skipped  {stats['records_skipped']:,}",
    ]
    for reason, count in stats["skipped_by_reason"].items():
        lines.append(f"    {reason:34s} {count:,}")
    if stats["negatives_identical_to_positive_skipped"]:
        lines.append(f"  documents identical to the positive, never used as negatives "
                     f"{stats['negatives_identical_to_positive_skipped']:,}")
    if stats["records_with_fewer_negatives"]:
        lines.append(
            f"  records with fewer than {stats['config']['num_negatives']} negatives "
            f"{stats['records_with_fewer_negatives']:,}"
        )
    if docs.get("records"):
        lines.append(
            f"  documents/record min {docs['min']}  mean {docs['mean']}  p50 {docs['p50']:g}  "
            f"p90 {docs['p90']:g}  max {docs['max']}"
        )
    lines += word_lines(stats)
    lines += mining_lines(stats)
    lines += get_mode(stats["mode"]).new_stats().lines(stats)
    if stats.get("records_dropped_fewer_negatives"):
        k = stats["config"]["pool_docs"] - 1 if stats["mode"] == "pool" else stats["config"]["num_negatives"]
        lines.append(f"  records with fewer than {k} negatives, left out of the "
                     f"sentence_transformers columns {stats['records_dropped_fewer_negatives']:,}")
    lines.append(f"  stats            {stats_path(stats['output_file'], stats.get('output_format', 'native'))}")
    print("\n".join(lines), file=file)
