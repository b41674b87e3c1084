"""Stage 0: NQ multi-document rows -> one (question, positive, negatives) JSON line per record.

For every input row: parse it, score all of its documents against the question with BM25, and
pick negatives among the non-gold documents. Records stream through in input order; workers
process batches of lines and the main process writes their results in order, so the output
bytes do not depend on the number of workers.
"""
from __future__ import annotations

import collections
import multiprocessing
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import orjson
from tqdm import tqdm

from long_ctx.common.atomic import atomic_file, write_json
from long_ctx.common.line_reader import InputFileError, LineReader
from long_ctx.stage0.bm25 import TOKENIZERS, get_tokenizer, index_documents, scores_from_index
from long_ctx.stage0.bm25.codepoints import JoinedDocs
from long_ctx.stage0.negatives import STRATEGIES, negative_candidates, select_negatives
from long_ctx.stage0.nq_format import SkipRecord, parse_line

# A task sent to a worker is up to BATCH_LINES lines or BATCH_BYTES of input: big enough to
# amortise IPC, small enough to balance. At most TASKS_IN_FLIGHT_PER_WORKER tasks per worker
# and IN_FLIGHT_BYTES of input are queued at once, so memory stays flat on any input size.
BATCH_LINES = 16
BATCH_BYTES = 4 << 20
TASKS_IN_FLIGHT_PER_WORKER = 3
IN_FLIGHT_BYTES = 96 << 20


@dataclass
class Stage0Config:
    input_file: str
    output_file: str
    num_splits: int = 0  # worker processes; 0 = CPU count
    negative_strategy: str = "least"
    num_negatives: int = 1
    seed: int = 0
    bm25_tokenizer: str = "words"
    filter_answer_docs: bool = True
    limit: int | None = None  # stop after this many input lines
    progress: bool = True

    def validate(self) -> None:
        if self.negative_strategy not in STRATEGIES:
            raise ValueError(f"--negative_strategy must be one of {STRATEGIES}")
        if self.bm25_tokenizer not in TOKENIZERS:
            raise ValueError(f"--bm25_tokenizer must be one of {sorted(TOKENIZERS)}")
        if self.num_negatives < 1:
            raise ValueError("--num_negatives must be at least 1")
        if self.seed < 0:
            raise ValueError("--seed must be a non-negative integer")
        if self.num_splits < 0:
            raise ValueError("--num_splits must be >= 1 (or 0 for one per CPU)")
        if self.limit is not None and self.limit < 0:
            raise ValueError("--limit must be >= 0")
        if Path(self.output_file).resolve() == Path(self.input_file).resolve():
            raise ValueError("--output_file must differ from --input_file")


# (line_number, output line or None, skip reason or None, documents in the record (0 if it did
# not parse), negatives chosen)
Result = tuple[int, "bytes | None", "str | None", int, int]


def process_line(line_number: int, line: bytes, cfg: Stage0Config) -> Result:
    """One input line -> its output JSON line (with b"\\n"), or the reason it was skipped."""
    try:
        rec = parse_line(line)
        gold = rec.gold_id - 1
        joined = JoinedDocs(rec.documents)  # shared by BM25 and the answer filter
        index = index_documents(rec.documents, cfg.bm25_tokenizer, joined)
        scores = scores_from_index(index, get_tokenizer(cfg.bm25_tokenizer)(rec.question))
        candidates = negative_candidates(
            rec.documents, gold, rec.answer, cfg.filter_answer_docs, joined
        )
        negs = select_negatives(
            scores, candidates, cfg.negative_strategy, cfg.num_negatives, cfg.seed, line_number
        )
    except SkipRecord as skip:
        n_docs = len(rec.documents) if skip.reason == "no_negative_candidate" else 0
        return line_number, None, skip.reason, n_docs, 0
    out = {
        "question": rec.question,
        "answer": rec.answer,
        "long_answer": rec.long_answer,
        "positive": rec.documents[gold],
        "negative": rec.documents[negs[0]],
        "negatives": [rec.documents[i] for i in negs],
        "gold_id": rec.gold_id,
        "negative_ids": [i + 1 for i in negs],
        "num_documents": len(rec.documents),
        "line_number": line_number,
    }
    line_out = orjson.dumps(out, option=orjson.OPT_APPEND_NEWLINE)
    return line_number, line_out, None, len(rec.documents), len(negs)


_worker_cfg: Stage0Config | None = None


def _init_worker(cfg: Stage0Config) -> None:
    global _worker_cfg
    _worker_cfg = cfg


def _process_batch(batch: list[tuple[int, bytes]]) -> list[Result]:
    return [process_line(n, line, _worker_cfg) for n, line in batch]


def _batches(lines: Iterable[tuple[int, bytes]]) -> Iterator[tuple[list[tuple[int, bytes]], int]]:
    """(batch, its size in bytes)."""
    batch: list[tuple[int, bytes]] = []
    size = 0
    for item in lines:
        batch.append(item)
        size += len(item[1])
        if len(batch) == BATCH_LINES or size >= BATCH_BYTES:
            yield batch, size
            batch, size = [], 0
    if batch:
        yield batch, size


def _results(lines: Iterable[tuple[int, bytes]], cfg: Stage0Config, workers: int) -> Iterator[Result]:
    if workers == 1:
        for n, line in lines:
            yield process_line(n, line, cfg)
        return
    # Pool.imap would read the whole input ahead of the workers; a bounded window of
    # apply_async tasks keeps memory flat and yields results in submission (= input) order.
    with multiprocessing.get_context().Pool(workers, _init_worker, (cfg,)) as pool:
        window: collections.deque = collections.deque()  # (async result, input bytes)
        in_flight = 0
        for batch, size in _batches(lines):
            window.append((pool.apply_async(_process_batch, (batch,)), size))
            in_flight += size
            while window and (
                len(window) >= workers * TASKS_IN_FLIGHT_PER_WORKER or in_flight > IN_FLIGHT_BYTES
            ):
                done, done_size = window.popleft()
                in_flight -= done_size
                yield from done.get()
        while window:
            yield from window.popleft()[0].get()


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


def stats_path(output_file: str | os.PathLike) -> Path:
    return Path(f"{output_file}.stats.json")


def main(cfg: Stage0Config) -> dict:
    """Run stage 0; returns the stats dict (also written to OUT.stats.json)."""
    cfg.validate()
    workers = cfg.num_splits or os.cpu_count() or 1
    reader = LineReader(cfg.input_file)
    skipped: collections.Counter = collections.Counter()
    docs_per_record: collections.Counter = collections.Counter()
    lines_read = written = short = 0
    start = time.perf_counter()
    bar = tqdm(
        total=reader.input_size, unit="B", unit_scale=True, unit_divisor=1024,
        desc="stage 0", disable=not cfg.progress, mininterval=0.5,
    )
    try:
        with atomic_file(cfg.output_file, "wb") as out:
            results = _results(_limited(reader, cfg.limit), cfg, workers)
            for _n, line_out, reason, n_docs, n_negs in results:
                lines_read += 1
                if line_out is None:
                    skipped[reason] += 1
                else:
                    out.write(line_out)
                    written += 1
                    docs_per_record[n_docs] += 1
                    short += n_negs < cfg.num_negatives
                if bar.n != reader.input_bytes:
                    bar.update(reader.input_bytes - bar.n)
                    rate = lines_read / max(time.perf_counter() - start, 1e-9)
                    bar.set_postfix_str(f"{written:,} records, {rate:,.0f} records/s", refresh=False)
    except InputFileError as exc:
        bar.close()
        raise InputFileError(
            f"{exc}\n{written:,} records had been processed from {lines_read:,} lines; "
            f"nothing was written to {cfg.output_file} (it is only created when the input "
            f"is read to its end)."
        ) from exc
    bar.close()
    elapsed = time.perf_counter() - start
    stats = {
        "input_file": str(cfg.input_file),
        "output_file": str(cfg.output_file),
        "config": asdict(cfg),
        "workers": workers,
        "lines_read": lines_read,
        "records_written": written,
        "records_skipped": sum(skipped.values()),
        # Written, but with fewer than --num_negatives negatives (not enough candidates).
        "records_with_fewer_negatives": short,
        "skipped_by_reason": dict(sorted(skipped.items())),
        "documents_per_record": _doc_summary(docs_per_record),
        "elapsed_s": round(elapsed, 3),
        "input_bytes": reader.input_bytes,
        "records_per_s": round(lines_read / elapsed, 1) if elapsed > 0 else None,
        "input_mb_per_s": round(reader.input_bytes / 1e6 / elapsed, 2) if elapsed > 0 else None,
    }
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
    lines.append(f"  stats            {stats_path(stats['output_file'])}")
    print("\n".join(lines), file=file)
