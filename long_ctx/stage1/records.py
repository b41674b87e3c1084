"""Stage 1's records: validate one stage-0 line and tokenize a chunk of them into an Arrow batch.

This is the work sent to worker processes (`process_chunk`); the driver only orders, counts
and writes what comes back. What a record looks like depends on the stage-0 `--mode` it was
written in: each mode has a format (`FORMAT_MODULES`: check a line, the Arrow schema, encode a
batch, the token-length columns its stats report). A run reads one mode, the first record's.
"""
from __future__ import annotations

import dataclasses
import importlib
import itertools
import os
from typing import Callable

import numpy as np
import orjson
import pyarrow as pa

from long_ctx.world_tokenizer import get_tokenizer

# Token-id columns keep the seed's names; `negative` is always negatives[0].
ID_COLUMNS = ("question", "answer", "long_answer", "positive", "negative")
STR_KEYS = ID_COLUMNS
INT_KEYS = ("gold_id", "num_documents", "line_number")
INT32_MAX = 2**31 - 1
TOKENS = pa.list_(pa.uint16())  # ids are 1..65529, so uint16 halves the size of int32


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


def parse_json(line: bytes) -> tuple[object, str | None]:
    """(parsed JSON value, None) or (None, skip reason)."""
    if not line.strip():
        return None, "blank_line"
    try:
        return orjson.loads(line), None
    except orjson.JSONDecodeError:
        # orjson also rejects lone surrogates, which could not be tokenized as UTF-8 anyway.
        return None, "invalid_json"


def parse_line(line: bytes) -> tuple[dict | None, str | None]:
    """(passage record, None) or (None, skip reason)."""
    obj, reason = parse_json(line)
    if reason is None:
        reason = check_record(obj)
    return (None, reason) if reason else (obj, None)


@dataclasses.dataclass
class ChunkResult:
    batch: pa.RecordBatch | None
    skipped: list[tuple[int, str]]  # (index of the line within the chunk, reason)


def _list_array(offsets: np.ndarray, values: pa.Array) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32), pa.int32()), values)


def tokenize_texts(texts: list[str]) -> Callable[[int, int], pa.ListArray]:
    """Token ids of `texts` (one Rust encode_batch call) -> `ids_column(first, count)`: the ids of
    texts[first:first + count] as one list<uint16> array. Lay the texts out column by column so
    that each output column is one contiguous slice of the flat id buffer."""
    ids = get_tokenizer().encode_batch(texts)
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.uint16, count=int(offsets[-1]))

    def ids_column(first_text: int, count: int) -> pa.ListArray:
        off = offsets[first_text : first_text + count + 1]
        # An explicit type matters: untyped pa.array(numpy uint16) is ~1000x slower here.
        return _list_array(off - off[0], pa.array(flat[off[0] : off[-1]], pa.uint16()))

    return ids_column


def encode_records(records: list[dict], keep_text: bool) -> pa.RecordBatch:
    """Token ids of valid records as one Arrow batch with `output_schema(keep_text)`."""
    n = len(records)
    # All questions, all answers, ..., then every negative.
    texts = [r[c] for c in ID_COLUMNS[:-1] for r in records]
    texts += [s for r in records for s in r["negatives"]]
    ids_column = tokenize_texts(texts)
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


class PassageFormat:
    """Stage 0's passage records (and any mode whose lines carry the same fields)."""

    name = "passage"
    #: Token-id columns whose lengths stats.json reports (`negatives`: every negative's length).
    length_columns = (*ID_COLUMNS, "negatives")
    #: Histogram series of token_lengths.png: label -> length column.
    plot_series = {"question": "question", "positive": "positive", "negative (all)": "negatives"}
    #: Columns printed in the run's summary.
    summary_columns = ("question", "positive", "negatives")
    #: Columns whose token totals are the tokens encoded (`negative` repeats negatives[0]).
    token_columns = ("question", "answer", "long_answer", "positive", "negatives")
    card_intro = ("`negative` is the first of `negatives`; `gold_id` and `negative_ids` are 1-based document "
                  "numbers in the source record; `line_number` is the 0-based line of the source NQ file.")

    def check(self, obj) -> str | None:
        return check_record(obj)

    def schema(self, keep_text: bool) -> pa.Schema:
        return output_schema(keep_text)

    def encode(self, records: list[dict], keep_text: bool) -> pa.RecordBatch:
        return encode_records(records, keep_text)

    def lengths(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        """Token counts of every `length_columns` entry of a batch."""
        import pyarrow.compute as pc  # main process only; workers skip its ~0.15 s import

        out = {c: pc.list_value_length(batch.column(c)).to_numpy(zero_copy_only=False) for c in ID_COLUMNS}
        out["negatives"] = pc.list_value_length(batch.column("negatives").flatten()).to_numpy(zero_copy_only=False)
        return out


#: stage-0 `mode` -> the module defining its `FORMAT` (a line without `mode` is a passage line).
FORMAT_MODULES = {
    "passage": "long_ctx.stage1.records",
    "window": "long_ctx.stage1.window_format",
    "pool": "long_ctx.stage1.pool_format",
}
FORMAT = PassageFormat()


def get_format(mode: str):
    if mode not in FORMAT_MODULES:
        raise ValueError(f"stage 1 does not know stage-0 mode {mode!r}; it reads {', '.join(FORMAT_MODULES)}")
    return importlib.import_module(FORMAT_MODULES[mode]).FORMAT


def line_mode(obj) -> str | None:
    """The stage-0 mode a parsed line was written in (None if it is not a JSON object)."""
    if not isinstance(obj, dict):
        return None
    mode = obj.get("mode", "passage")
    return mode if isinstance(mode, str) else None


def detect_mode(lines: list[bytes]) -> str | None:
    """The mode of the first line that is a JSON object, or None if there is none; a
    flag_embedding export line is a UsageError (stage 1 reads native lines only)."""
    from long_ctx.common.cli import UsageError  # (main process only: workers never import the exports)
    from long_ctx.stage0.export import NATIVE_ONLY, is_flag_embedding_line

    for line in lines:
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if is_flag_embedding_line(obj):
            raise UsageError("the input is stage 0's --output_format flag_embedding jsonl (query/pos/neg); "
                             + NATIVE_ONLY)
        mode = line_mode(obj)
        if mode is not None:
            return mode
    return None


def process_chunk(task: tuple[list[bytes], bool, str]) -> ChunkResult:
    """Parse, validate and tokenize one chunk of lines (the unit of work sent to a worker).

    Every line must be of the run's mode (the first record's); another mode is skipped as
    `mode_mismatch`.
    """
    lines, keep_text, mode = task
    fmt = get_format(mode)
    records, skipped = [], []
    for i, line in enumerate(lines):
        obj, reason = parse_json(line)
        if reason is None and line_mode(obj) not in (None, mode):
            reason = "mode_mismatch"
        if reason is None:
            reason = fmt.check(obj)
        if reason:
            skipped.append((i, reason))
        else:
            records.append(obj)
    return ChunkResult(fmt.encode(records, keep_text) if records else None, skipped)


def init_worker() -> None:
    """Process set-up: one tokenizer thread per process, then load the vocab.

    pyrwkv's `encode_batch` runs on a rayon pool with one thread per core. Parallelism here comes
    from worker processes; measured on 2 busy cores, the extra rayon threads cost 35% more CPU
    and 2.5x the wall time, so each process keeps a single thread (rayon reads this variable when
    its pool is first used; it is not a user setting).
    """
    os.environ["RAYON_NUM_THREADS"] = "1"
    get_tokenizer()
