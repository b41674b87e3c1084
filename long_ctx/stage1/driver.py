"""Stage 1: stage-0 query/positive/negative jsonl -> RWKV World token ids in a parquet dataset.

Lines are read in fixed-size chunks; each chunk is parsed, validated and tokenized (one Rust
`encode_batch` call) in a worker process, which returns an Arrow record batch. Batches come back in
input order and stream into parquet shards, so memory stays bounded and the output bytes do not
depend on the number of workers. The output folder replaces only an earlier stage-1 output (and
only with `overwrite`); every path is checked before any work starts.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import os
import time
from pathlib import Path
from typing import Iterator

from long_ctx.common.atomic import atomic_dir, check_output_dir, write_json
from long_ctx.common.cli import UsageError, WorkerDied
from long_ctx.common.dataset_card import SHARD_GLOB, length_table, markdown_table, write_dataset_card
from long_ctx.common.lengths import LengthCounter, plot_length_histograms
from long_ctx.common.line_reader import InputFileError, LineReader, check_input_file
from long_ctx.common.ordered_pool import ordered_imap
from long_ctx.common.parquet_shards import ShardWriter
from long_ctx.common.progress import progress_bar
from long_ctx.stage0.export import NATIVE_ONLY, is_export_folder
from long_ctx.stage1.records import ChunkResult, detect_mode, get_format, init_worker, process_chunk
from long_ctx.world_tokenizer import tokenizer_info

STATS_FILE = "stats.json"
PLOT_FILE = "token_lengths.png"
CARD_FILE = "README.md"
#: What makes a folder an earlier stage-1 output: its stats.json holding keys only stage 1 writes
#: (a bare stats.json is too common a name to count).
MARKER = {STATS_FILE: ("records_written", "shards", "tokens_encoded", "token_lengths", "tokenizer")}
#: Every name stage 1 writes into its folder; anything else there is the user's.
OWN_FILES = (SHARD_GLOB, STATS_FILE, PLOT_FILE, CARD_FILE)


@dataclasses.dataclass
class Stage1Config:
    input_file: str
    output_dir: str
    num_proc: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    keep_text: bool = False
    rows_per_shard: int = 100_000
    row_group_rows: int = 2_048
    chunk_size: int = 256
    limit: int | None = None
    progress: bool = True
    overwrite: bool = False  # replace an earlier stage-1 output at output_dir

    def validate(self) -> None:
        for name in ("num_proc", "rows_per_shard", "row_group_rows", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"--limit must be >= 0, got {self.limit}")
        if is_export_folder(self.input_file):
            raise UsageError(f"--input_file {self.input_file} is stage 0's --output_format sentence_transformers "
                             f"folder; {NATIVE_ONLY}")
        check_input_file(self.input_file)
        check_output_dir(self.output_dir, MARKER, "stage-1 dataset", inputs=[self.input_file],
                         overwrite=self.overwrite, own=OWN_FILES)


# ---------------------------------------------------------------------------------------------
# Input


def iter_chunks(reader: LineReader, chunk_size: int, limit: int | None, bar) -> Iterator[list[bytes]]:
    """Lists of up to `chunk_size` raw lines; the bar follows the (compressed) bytes read.

    Reading is stage 0's reader, so a truncated .zst fails the same way (InputFileError).
    """
    chunk: list[bytes] = []
    shown = 0
    for line_number, line in reader:
        if limit is not None and line_number >= limit:
            break
        chunk.append(line)
        if len(chunk) == chunk_size:
            bar.update(reader.input_bytes - shown)
            shown = reader.input_bytes
            yield chunk
            chunk = []
    if chunk:
        yield chunk
    bar.update(reader.input_bytes - shown)


#: Chunks read ahead at most to find the first record and with it the run's stage-0 mode.
MODE_LOOKAHEAD_CHUNKS = 16


def peek_mode(chunks: Iterator[list[bytes]]) -> tuple[str, Iterator[list[bytes]]]:
    """(the stage-0 mode of the first record, the same chunks from the start); passage when no
    line in the first MODE_LOOKAHEAD_CHUNKS chunks is a JSON object."""
    head: list[list[bytes]] = []
    mode = None
    for chunk in chunks:
        head.append(chunk)
        mode = detect_mode(chunk)
        if mode is not None or len(head) >= MODE_LOOKAHEAD_CHUNKS:
            break
    return mode or "passage", itertools.chain(head, chunks)


# ---------------------------------------------------------------------------------------------
# Driver


class _Summary:
    """Counts and length distributions gathered while batches stream past."""

    def __init__(self, fmt) -> None:
        self.fmt = fmt
        self.lines = 0
        self.written = 0
        self.skipped: collections.Counter = collections.Counter()
        self.examples: list[dict] = []
        self.lengths = {c: LengthCounter() for c in fmt.length_columns}

    def add(self, result: ChunkResult, first_line: int, n_lines: int) -> None:
        self.lines += n_lines
        for i, reason in result.skipped:
            self.skipped[reason] += 1
            if len(self.examples) < 20 and reason != "blank_line":
                self.examples.append({"line": first_line + i, "reason": reason})
        if result.batch is None:
            return
        self.written += result.batch.num_rows
        for c, lengths in self.fmt.lengths(result.batch).items():
            self.lengths[c].add(lengths)


def main(config: Stage1Config) -> dict:
    """Run stage 1; returns the stats written to `<output_dir>/stats.json`."""
    config.validate()
    in_path, out_dir = Path(config.input_file), Path(config.output_dir)
    start = time.perf_counter()
    reader = LineReader(in_path)
    bar = progress_bar(total=reader.input_size, unit="B", unit_scale=True, desc="stage 1",
                       disable=not config.progress)
    with atomic_dir(out_dir) as tmp:
        mode, chunks = peek_mode(iter_chunks(reader, config.chunk_size, config.limit, bar))
        fmt = get_format(mode)
        summary = _Summary(fmt)
        # snappy + dictionary: within 20% of zstd's size, cheaper to write and 3x faster to read.
        writer = ShardWriter(tmp, fmt.schema(config.keep_text), config.rows_per_shard, config.row_group_rows,
                             compression="snappy")
        sizes: collections.deque = collections.deque()

        def tasks():
            for chunk in chunks:
                sizes.append(len(chunk))
                yield chunk, config.keep_text, mode

        try:
            with bar:
                for result in ordered_imap(process_chunk, tasks(), config.num_proc, initializer=init_worker,
                                           preload=["long_ctx.stage1.preload"]):
                    n_lines = sizes.popleft()
                    summary.add(result, summary.lines, n_lines)
                    writer.write(result.batch)
                    bar.set_postfix(records=summary.written, skipped=sum(summary.skipped.values()), refresh=False)
        except WorkerDied:
            raise
        except Exception as exc:
            # An unreadable input is the user's to fix (one-line error from the CLI); anything
            # else keeps its type, so a bug still shows its traceback.
            kind = InputFileError if isinstance(exc, (InputFileError, OSError)) else RuntimeError
            raise kind(
                f"stage 1 stopped while reading {in_path} after {summary.written} records "
                f"({summary.lines} lines); nothing was written to {out_dir}: {exc}"
            ) from exc
        shards = writer.close()
        elapsed = time.perf_counter() - start
        stats = _stats(config, summary, shards, elapsed)
        write_json(tmp / STATS_FILE, stats)
        plot_length_histograms(
            {label: summary.lengths[c] for label, c in fmt.plot_series.items()},
            tmp / PLOT_FILE, title=f"Stage 1 token lengths: {out_dir.name}",
        )
        _write_card(tmp / CARD_FILE, stats, out_dir.name, fmt)
    _print_summary(stats, out_dir, fmt)
    return stats


def _stats(config: Stage1Config, s: _Summary, shards: list[Path], elapsed: float) -> dict:
    tokens = sum(s.lengths[c].total for c in s.fmt.token_columns)
    return {
        "input_file": str(config.input_file),
        "mode": s.fmt.name,
        "lines_read": s.lines,
        "records_written": s.written,
        "records_skipped": sum(s.skipped.values()),
        "skipped_by_reason": dict(sorted(s.skipped.items())),
        "skipped_examples": s.examples,
        "tokens_encoded": tokens,
        "token_lengths": {c: s.lengths[c].summary() for c in s.fmt.length_columns},
        "columns": {f.name: str(f.type) for f in s.fmt.schema(config.keep_text)},
        "shards": [p.name for p in shards],
        "tokenizer": tokenizer_info(),
        "num_proc": config.num_proc,
        "elapsed_s": round(elapsed, 3),
        "records_per_s": round(s.written / elapsed, 1) if elapsed > 0 else None,
        "tokens_per_s": round(tokens / elapsed, 1) if elapsed > 0 else None,
    }


def _write_card(path: Path, stats: dict, name: str, fmt) -> None:
    columns = markdown_table(["column", "type"], stats["columns"].items())
    counts = markdown_table(
        ["lines read", "records written", "records skipped"],
        [[stats["lines_read"], stats["records_written"], stats["records_skipped"]]],
    )
    reasons = markdown_table(["skip reason", "count"], stats["skipped_by_reason"].items()) \
        if stats["skipped_by_reason"] else "No line was skipped."
    tok = stats["tokenizer"]
    write_dataset_card(
        path,
        title=f"{name}: RWKV World token ids (stage 1)",
        intro=(
            f"Stage-0 records (mode `{fmt.name}`) from `{Path(stats['input_file']).name}` tokenized with the "
            f"RWKV World tokenizer (`{tok['vocab']}`, ids {tok['id_range'][0]}..{tok['id_range'][1]}, "
            f"{tok['encoder']}, identical to `rwkv.rwkv_tokenizer.TRIE_TOKENIZER`). Load with "
            "`datasets.load_dataset(DIR, split=\"train\")`. " + fmt.card_intro
        ),
        sections=[
            ("Counts", counts + "\n\n" + reasons),
            ("Token lengths", length_table(stats["token_lengths"]) + f"\n\n![token lengths]({PLOT_FILE})"),
            ("Columns", columns),
            ("Files", f"Shards: {', '.join(stats['shards'])}. Full statistics: `{STATS_FILE}`."),
        ],
    )


def _print_summary(stats: dict, out_dir: Path, fmt) -> None:
    print(f"stage 1: {stats['records_written']:,} records -> {out_dir} "
          f"({len(stats['shards'])} shard(s), {stats['tokens_encoded']:,} tokens, "
          f"{stats['elapsed_s']:.1f} s, {stats['records_per_s'] or 0:,.0f} records/s)")
    if not stats["records_written"]:
        print("  warning: no record was written (datasets.load_dataset cannot load an empty split)")
    if stats["records_skipped"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in stats["skipped_by_reason"].items())
        print(f"  skipped {stats['records_skipped']:,} line(s): {reasons}")
    for c in fmt.summary_columns:
        s = stats["token_lengths"][c]
        print(f"  {c:>9} tokens: mean {s['mean']:.1f}, p50 {s['p50']}, p99 {s['p99']}, max {s['max']}")
