"""Stage 1: stage-0 query/positive/negative jsonl -> RWKV World token ids in a parquet dataset.

Lines are read in fixed-size chunks; each chunk is parsed, validated and tokenized (one Rust
`encode_batch` call) in a worker process, which returns an Arrow record batch. Batches come back in
input order and stream into parquet shards, so memory stays bounded and the output bytes do not
depend on the number of workers.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import os
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import orjson
import pyarrow as pa
from tqdm import tqdm

from long_ctx.atomic import atomic_dir, write_json
from long_ctx.dataset_card import length_table, markdown_table, write_dataset_card
from long_ctx.length_plots import plot_length_histograms
from long_ctx.length_stats import LengthCounter
from long_ctx.nq_reader import InputFileError, LineReader
from long_ctx.ordered_pool import ordered_imap
from long_ctx.parquet_shards import ShardWriter
from long_ctx.world_tokenizer import get_tokenizer, tokenizer_info

# Token-id columns keep the seed's names; `negative` is always negatives[0].
ID_COLUMNS = ("question", "answer", "long_answer", "positive", "negative")
STR_KEYS = ID_COLUMNS
INT_KEYS = ("gold_id", "num_documents", "line_number")
INT32_MAX = 2**31 - 1
TOKENS = pa.list_(pa.uint16())  # ids are 1..65529, so uint16 halves the size of int32
STATS_FILE = "stats.json"
PLOT_FILE = "token_lengths.png"


def text_column(name: str) -> str:
    """Name of the column holding the original string of id column `name` (with --keep_text)."""
    return f"{name}_text"


def output_schema(keep_text: bool) -> pa.Schema:
    fields = [pa.field(c, TOKENS) for c in ID_COLUMNS]
    fields += [
        pa.field("negatives", pa.list_(TOKENS)),
        pa.field("gold_id", pa.int32()),
        pa.field("negative_ids", pa.list_(pa.int32())),
        pa.field("num_documents", pa.int32()),
        pa.field("line_number", pa.int64()),
    ]
    if keep_text:
        fields += [pa.field(text_column(c), pa.string()) for c in ID_COLUMNS]
        fields += [pa.field(text_column("negatives"), pa.list_(pa.string()))]
    return pa.schema(fields)


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

    def validate(self) -> None:
        if not Path(self.input_file).is_file():
            raise FileNotFoundError(f"--input_file {self.input_file} does not exist (expected stage-0 jsonl)")
        for name in ("num_proc", "rows_per_shard", "row_group_rows", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"--limit must be >= 0, got {self.limit}")
        if Path(self.output_dir).resolve() == Path(self.input_file).resolve():
            raise ValueError("--output_dir must differ from --input_file")


# ---------------------------------------------------------------------------------------------
# Parsing and validation (runs in workers)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_record(obj) -> str | None:
    """None if `obj` is a usable stage-0 record, else the name of the reason to skip it."""
    if not isinstance(obj, dict):
        return "not_an_object"
    for key in (*STR_KEYS, "negatives", "negative_ids", *INT_KEYS):
        if key not in obj:
            return f"missing_key:{key}"
    for key in STR_KEYS:
        if not isinstance(obj[key], str):
            return f"wrong_type:{key}"
    negatives, negative_ids = obj["negatives"], obj["negative_ids"]
    if not isinstance(negatives, list) or not all(isinstance(s, str) for s in negatives):
        return "wrong_type:negatives"
    if not isinstance(negative_ids, list) or not all(_is_int(i) for i in negative_ids):
        return "wrong_type:negative_ids"
    for key in INT_KEYS:
        if not _is_int(obj[key]):
            return f"wrong_type:{key}"
    if not all(0 <= i <= INT32_MAX for i in (*negative_ids, obj["gold_id"], obj["num_documents"])):
        return "id_out_of_range"
    if obj["line_number"] < 0 or obj["line_number"] >= 2**63:
        return "id_out_of_range"
    if not negatives:
        return "no_negatives"
    if len(negatives) != len(negative_ids):
        return "negatives_and_ids_differ_in_length"
    if obj["negative"] != negatives[0]:
        return "negative_is_not_first_of_negatives"
    return None


def parse_line(line: bytes) -> tuple[dict | None, str | None]:
    """(record, None) or (None, skip reason)."""
    if not line.strip():
        return None, "blank_line"
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        # orjson also rejects lone surrogates, which could not be tokenized as UTF-8 anyway.
        return None, "invalid_json"
    reason = check_record(obj)
    return (None, reason) if reason else (obj, None)


@dataclasses.dataclass
class ChunkResult:
    batch: pa.RecordBatch | None
    skipped: list[tuple[int, str]]  # (index of the line within the chunk, reason)


def _list_array(offsets: np.ndarray, values: pa.Array) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32), pa.int32()), values)


def encode_records(records: list[dict], keep_text: bool) -> pa.RecordBatch:
    """Token ids of valid records as one Arrow batch with `output_schema(keep_text)`."""
    n = len(records)
    # Texts laid out column by column (all questions, all answers, ..., then every negative) so
    # that each output column is one contiguous slice of the flat id buffer.
    texts = [r[c] for c in ID_COLUMNS[:-1] for r in records]
    texts += [s for r in records for s in r["negatives"]]
    ids = get_tokenizer().encode_batch(texts)
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.uint16, count=int(offsets[-1]))

    def ids_column(first_text: int, count: int) -> pa.ListArray:
        off = offsets[first_text : first_text + count + 1]
        # An explicit type matters: untyped pa.array(numpy uint16) is ~1000x slower here.
        return _list_array(off - off[0], pa.array(flat[off[0] : off[-1]], pa.uint16()))

    columns = {c: ids_column(i * n, n) for i, c in enumerate(ID_COLUMNS[:-1])}
    neg_counts = np.fromiter((len(r["negatives"]) for r in records), dtype=np.int64, count=n)
    neg_outer = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(neg_counts, out=neg_outer[1:])
    every_negative = ids_column(4 * n, int(neg_outer[-1]))
    columns["negative"] = every_negative.take(pa.array(neg_outer[:-1], pa.int64()))  # == negatives[0] (checked)
    columns["negatives"] = _list_array(neg_outer, every_negative)
    columns["gold_id"] = pa.array([r["gold_id"] for r in records], pa.int32())
    columns["negative_ids"] = _list_array(
        neg_outer, pa.array([i for r in records for i in r["negative_ids"]], pa.int32())
    )
    columns["num_documents"] = pa.array([r["num_documents"] for r in records], pa.int32())
    columns["line_number"] = pa.array([r["line_number"] for r in records], pa.int64())
    if keep_text:
        for c in ID_COLUMNS:
            columns[text_column(c)] = pa.array([r[c] for r in records], pa.string())
        columns[text_column("negatives")] = pa.array([r["negatives"] for r in records], pa.list_(pa.string()))
    schema = output_schema(keep_text)
    return pa.RecordBatch.from_arrays([columns[f.name] for f in schema], schema=schema)


def process_chunk(task: tuple[list[bytes], bool]) -> ChunkResult:
    """Parse, validate and tokenize one chunk of lines (the unit of work sent to a worker)."""
    lines, keep_text = task
    records, skipped = [], []
    for i, line in enumerate(lines):
        record, reason = parse_line(line)
        if reason:
            skipped.append((i, reason))
        else:
            records.append(record)
    return ChunkResult(encode_records(records, keep_text) if records else None, skipped)


def _init_worker() -> None:
    """Process set-up: one tokenizer thread per process, then load the vocab.

    pyrwkv's `encode_batch` runs on a rayon pool with one thread per core. Parallelism here comes
    from worker processes; measured on 2 busy cores, the extra rayon threads cost 35% more CPU
    and 2.5x the wall time, so each process keeps a single thread (rayon reads this variable when
    its pool is first used; it is not a user setting).
    """
    os.environ["RAYON_NUM_THREADS"] = "1"
    get_tokenizer()


# ---------------------------------------------------------------------------------------------
# Input


def iter_chunks(path: Path, chunk_size: int, limit: int | None, bar: tqdm) -> Iterator[list[bytes]]:
    """Lists of up to `chunk_size` raw lines; the bar follows the (compressed) bytes read.

    Reading is stage 0's reader, so a truncated .zst fails the same way (InputFileError).
    """
    reader = LineReader(path)
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


# ---------------------------------------------------------------------------------------------
# Driver


class _Summary:
    """Counts and length distributions gathered while batches stream past."""

    def __init__(self) -> None:
        self.lines = 0
        self.written = 0
        self.skipped: collections.Counter = collections.Counter()
        self.examples: list[dict] = []
        self.lengths = {c: LengthCounter() for c in (*ID_COLUMNS, "negatives")}

    def add(self, result: ChunkResult, first_line: int, n_lines: int) -> None:
        self.lines += n_lines
        for i, reason in result.skipped:
            self.skipped[reason] += 1
            if len(self.examples) < 20 and reason != "blank_line":
                self.examples.append({"line": first_line + i, "reason": reason})
        batch = result.batch
        if batch is None:
            return
        import pyarrow.compute as pc  # main process only; workers skip its ~0.15 s import

        self.written += batch.num_rows
        for c in ID_COLUMNS:
            self.lengths[c].add(pc.list_value_length(batch.column(c)).to_numpy(zero_copy_only=False))
        self.lengths["negatives"].add(
            pc.list_value_length(batch.column("negatives").flatten()).to_numpy(zero_copy_only=False)
        )


def main(config: Stage1Config) -> dict:
    """Run stage 1; returns the stats written to `<output_dir>/stats.json`."""
    config.validate()
    in_path, out_dir = Path(config.input_file), Path(config.output_dir)
    start = time.perf_counter()
    summary = _Summary()
    schema = output_schema(config.keep_text)
    bar = tqdm(total=in_path.stat().st_size, unit="B", unit_scale=True, desc="stage 1",
               disable=not config.progress)
    with atomic_dir(out_dir) as tmp:
        # snappy + dictionary: within 20% of zstd's size, cheaper to write and 3x faster to read.
        writer = ShardWriter(tmp, schema, config.rows_per_shard, config.row_group_rows, compression="snappy")
        chunks = iter_chunks(in_path, config.chunk_size, config.limit, bar)
        sizes: collections.deque = collections.deque()

        def tasks():
            for chunk in chunks:
                sizes.append(len(chunk))
                yield chunk, config.keep_text

        try:
            for result in ordered_imap(process_chunk, tasks(), config.num_proc, initializer=_init_worker,
                                       preload=["long_ctx.stage1_preload"]):
                n_lines = sizes.popleft()
                summary.add(result, summary.lines, n_lines)
                writer.write(result.batch)
                bar.set_postfix(records=summary.written, skipped=sum(summary.skipped.values()), refresh=False)
        except Exception as exc:
            # An unreadable input is the user's to fix (one-line error from the CLI); anything
            # else keeps its type, so a bug still shows its traceback.
            kind = InputFileError if isinstance(exc, (InputFileError, OSError)) else RuntimeError
            raise kind(
                f"stage 1 stopped while reading {in_path} after {summary.written} records "
                f"({summary.lines} lines); nothing was written to {out_dir}: {exc}"
            ) from exc
        finally:
            bar.close()
        shards = writer.close()
        elapsed = time.perf_counter() - start
        stats = _stats(config, summary, shards, elapsed)
        write_json(tmp / STATS_FILE, stats)
        plot_length_histograms(
            {"question": summary.lengths["question"], "positive": summary.lengths["positive"],
             "negative (all)": summary.lengths["negatives"]},
            tmp / PLOT_FILE, title=f"Stage 1 token lengths: {out_dir.name}",
        )
        _write_card(tmp / "README.md", stats, out_dir.name)
    _print_summary(stats, out_dir)
    return stats


def _stats(config: Stage1Config, s: _Summary, shards: list[Path], elapsed: float) -> dict:
    tokens = sum(s.lengths[c].total for c in ID_COLUMNS[:-1]) + s.lengths["negatives"].total
    return {
        "input_file": str(config.input_file),
        "lines_read": s.lines,
        "records_written": s.written,
        "records_skipped": sum(s.skipped.values()),
        "skipped_by_reason": dict(sorted(s.skipped.items())),
        "skipped_examples": s.examples,
        "tokens_encoded": tokens,
        "token_lengths": {c: s.lengths[c].summary() for c in (*ID_COLUMNS, "negatives")},
        "columns": {f.name: str(f.type) for f in output_schema(config.keep_text)},
        "shards": [p.name for p in shards],
        "tokenizer": tokenizer_info(),
        "num_proc": config.num_proc,
        "elapsed_s": round(elapsed, 3),
        "records_per_s": round(s.written / elapsed, 1) if elapsed > 0 else None,
        "tokens_per_s": round(tokens / elapsed, 1) if elapsed > 0 else None,
    }


def _write_card(path: Path, stats: dict, name: str) -> None:
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
            f"Query/positive/negative records from `{Path(stats['input_file']).name}` tokenized with the "
            f"RWKV World tokenizer (`{tok['vocab']}`, ids {tok['id_range'][0]}..{tok['id_range'][1]}, "
            f"{tok['encoder']}, identical to `rwkv.rwkv_tokenizer.TRIE_TOKENIZER`). Load with "
            "`datasets.load_dataset(DIR, split=\"train\")`. `negative` is the first of `negatives`; "
            "`gold_id` and `negative_ids` are 1-based document numbers in the source record; "
            "`line_number` is the 0-based line of the source NQ file."
        ),
        sections=[
            ("Counts", counts + "\n\n" + reasons),
            ("Token lengths", length_table(stats["token_lengths"]) + f"\n\n![token lengths]({PLOT_FILE})"),
            ("Columns", columns),
            ("Files", f"Shards: {', '.join(stats['shards'])}. Full statistics: `{STATS_FILE}`."),
        ],
    )


def _print_summary(stats: dict, out_dir: Path) -> None:
    print(f"stage 1: {stats['records_written']:,} records -> {out_dir} "
          f"({len(stats['shards'])} shard(s), {stats['tokens_encoded']:,} tokens, "
          f"{stats['elapsed_s']:.1f} s, {stats['records_per_s'] or 0:,.0f} records/s)")
    if not stats["records_written"]:
        print("  warning: no record was written (datasets.load_dataset cannot load an empty split)")
    if stats["records_skipped"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in stats["skipped_by_reason"].items())
        print(f"  skipped {stats['records_skipped']:,} line(s): {reasons}")
    for c in ("question", "positive", "negatives"):
        s = stats["token_lengths"][c]
        print(f"  {c:>9} tokens: mean {s['mean']:.1f}, p50 {s['p50']}, p99 {s['p99']}, max {s['max']}")
