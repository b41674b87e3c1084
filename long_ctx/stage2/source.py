"""Stage 2's input: a stage-1 dataset folder, checked as a whole before any row is built.

A dataset that lost a shard (deleted, not copied, a download cut short) still loads, just with
fewer rows, and every later number would silently be about part of the data. So the shards must
be exactly `train-00000-of-N` .. `train-(N-1)-of-N`, they must be the ones stage 1's
`stats.json` lists, and their rows must add up to its `records_written`. A shard that is not
parquet (damaged, truncated) or lacks the stage-1 columns is an error naming the file.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Iterator

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from long_ctx.common.cli import UsageError
from long_ctx.common.dataset_card import SHARD_GLOB, shard_name
from long_ctx.common.line_reader import InputFileError
from long_ctx.stage0.export import NATIVE_ONLY, is_export_folder

SHARD_NAME = re.compile(r"^train-(\d{5})-of-(\d{5})\.parquet$")
STAGE1_STATS = "stats.json"
RERUN = "re-create it with long_ctx/1_create_datasets.py"
# pyarrow's errors on a damaged file: ArrowInvalid (a ValueError), ArrowIOError (an OSError), ...
_READ_ERRORS = (pa.ArrowException, OSError, ValueError)


@dataclasses.dataclass
class Stage1Dataset:
    ds_dir: Path
    shards: list[Path]  # in order
    num_records: int
    neg_col: str  # "negatives", or "negative" in older stage-1 data (one negative per record); "" for pool data
    mode: str = "passage"  # the stage-0 mode stage 1 read (its stats.json `mode`); "pool" makes pool rows


def _fail(ds: Path, what: str) -> InputFileError:
    return InputFileError(f"--ds_dir {ds}: {what}; {RERUN} (or restore the missing files)")


def _check_names(ds: Path, found: list[Path]) -> list[Path]:
    parsed = {}
    for p in found:
        m = SHARD_NAME.match(p.name)
        if not m:
            raise _fail(ds, f"{p.name} is not a shard name of the form train-XXXXX-of-YYYYY.parquet")
        parsed[p.name] = (int(m.group(1)), int(m.group(2)))
    totals = sorted({n for _, n in parsed.values()})
    if len(totals) > 1:
        raise _fail(ds, "shards of different runs are mixed (" + ", ".join(f"-of-{n:05d}" for n in totals) + ")")
    n = totals[0]
    expected = [shard_name(i, n) for i in range(n)]
    missing = [name for name in expected if name not in parsed]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise _fail(ds, f"{len(missing)} of its {n} shards are missing ({shown})")
    extra = sorted(set(parsed) - set(expected))
    if extra:
        raise _fail(ds, f"unexpected shard(s) {', '.join(extra)} beside the {n} listed by their names")
    return [ds / name for name in expected]


def _stage1_stats(ds: Path) -> dict:
    path = ds / STAGE1_STATS
    try:
        stats = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise _fail(ds, f"no {STAGE1_STATS}, so it cannot be checked that no shard is missing") from None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise _fail(ds, f"{STAGE1_STATS} cannot be read ({exc})") from None
    if not (isinstance(stats, dict) and isinstance(stats.get("shards"), list)
            and isinstance(stats.get("records_written"), int)):
        raise _fail(ds, f"{STAGE1_STATS} is not stage 1's (it lacks `shards` / `records_written`)")
    return stats


def _is_int_list(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_integer(t.value_type)


#: The columns stage 2 reads from pool data, and what each must be.
POOL_COLUMNS = {"question": "a list of token ids", "documents": "a list of token-id lists",
                "label_index": "an integer", "doc_ids": "a list of integers"}


def _open_pool_shard(shard: Path, pf: pq.ParquetFile) -> tuple[pq.ParquetFile, str]:
    schema = pf.schema_arrow
    missing = sorted(set(POOL_COLUMNS) - set(schema.names))
    if missing:
        raise ValueError(f"{shard} is not a stage-1 shard of pool data (missing {missing}); point --ds_dir at the "
                         "output of long_ctx/1_create_datasets.py on a stage-0 --mode pool file")
    t = {c: schema.field(c).type for c in POOL_COLUMNS}
    ok = (_is_int_list(t["question"]) and pa.types.is_list(t["documents"]) and _is_int_list(t["documents"].value_type)
          and pa.types.is_integer(t["label_index"]) and _is_int_list(t["doc_ids"]))
    if not ok:
        types = ", ".join(f"{c}: {typ} (expected {POOL_COLUMNS[c]})" for c, typ in t.items())
        raise ValueError(f"{shard} has the pool column names but not their types ({types}); {RERUN}")
    return pf, ""


def _open_shard(shard: Path, mode: str = "passage") -> tuple[pq.ParquetFile, str]:
    try:
        # Stage 1 writes page checksums; verifying them makes a flipped bit an error, not other ids.
        pf = pq.ParquetFile(shard, page_checksum_verification=True)
        schema = pf.schema_arrow
    except _READ_ERRORS as exc:
        raise InputFileError(f"{shard}: not a readable parquet file ({exc}); it is damaged — {RERUN}") from None
    if mode == "pool":
        return _open_pool_shard(shard, pf)
    names = set(schema.names)
    missing = {"question", "positive"} - names
    if missing or not names & {"negatives", "negative"}:
        raise ValueError(
            f"{shard} is not a stage-1 shard (missing {sorted(missing) or 'negatives'}); "
            "point --ds_dir at the output of long_ctx/1_create_datasets.py"
        )
    neg_col = "negatives" if "negatives" in names else "negative"
    neg_type = schema.field(neg_col).type
    if neg_col == "negatives":  # a list of id lists
        neg_ok = pa.types.is_list(neg_type) and _is_int_list(neg_type.value_type)
    else:
        neg_ok = _is_int_list(neg_type)
    if not (neg_ok and _is_int_list(schema.field("question").type) and _is_int_list(schema.field("positive").type)):
        types = ", ".join(f"{c}: {schema.field(c).type}" for c in ("question", "positive", neg_col))
        raise ValueError(f"{shard} has the stage-1 column names but not their types ({types}; expected lists of "
                         f"token ids); {RERUN}")
    return pf, neg_col


def open_stage1(ds_dir: str | Path) -> Stage1Dataset:
    """Check a stage-1 folder whole (names, stats, schemas, row counts); raise naming what is wrong."""
    ds = Path(ds_dir)
    if is_export_folder(ds):
        raise UsageError(f"--ds_dir {ds} is stage 0's --output_format sentence_transformers folder, not a stage-1 "
                         f"dataset; {NATIVE_ONLY}, then stage 1")
    found = sorted(ds.glob(SHARD_GLOB)) if ds.is_dir() else []
    if not found:
        raise FileNotFoundError(f"--ds_dir {ds} has no {SHARD_GLOB} shards; run long_ctx/1_create_datasets.py first")
    shards = _check_names(ds, found)
    stats = _stage1_stats(ds)
    if sorted(stats["shards"]) != [p.name for p in shards]:
        raise _fail(ds, f"its shards ({len(shards)}) are not the {len(stats['shards'])} that {STAGE1_STATS} lists")
    mode = stats.get("mode") if isinstance(stats.get("mode"), str) else "passage"
    total, neg_cols = 0, set()
    for shard in shards:
        pf, neg_col = _open_shard(shard, mode)
        total += pf.metadata.num_rows
        neg_cols.add(neg_col)
    if total != stats["records_written"]:
        raise _fail(ds, f"its shards hold {total:,} records but {STAGE1_STATS} says {stats['records_written']:,} "
                        "were written (a shard was replaced or cut)")
    if len(neg_cols) > 1:
        raise _fail(ds, "some shards have `negatives`, others only `negative`")
    return Stage1Dataset(ds, shards, total, neg_cols.pop(), mode)


def _read(shard: Path, pf: pq.ParquetFile, batch_records: int, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """The shard's batches; a read error names the damaged file."""
    batches = pf.iter_batches(batch_size=batch_records, columns=columns)
    while True:
        try:
            batch = next(batches, None)
        except _READ_ERRORS as exc:
            raise InputFileError(f"{shard}: damaged, reading failed ({exc}); {RERUN}") from None
        if batch is None:
            return
        yield batch


def iter_stage1_batches(source: Stage1Dataset, batch_records: int) -> Iterator[tuple[pa.ListArray, pa.ListArray, pa.ListArray]]:
    """(question, positive, negatives) arrays of every stage-1 record, in dataset order."""
    for shard in source.shards:
        pf, neg_col = _open_shard(shard)
        for batch in _read(shard, pf, batch_records, ["question", "positive", neg_col]):
            negatives = batch.column(neg_col)
            if neg_col == "negative":  # older stage-1 data: one negative per record
                negatives = pa.ListArray.from_arrays(pa.array(np.arange(len(negatives) + 1), pa.int32()), negatives)
            yield batch.column("question"), batch.column("positive"), negatives


def iter_pool_batches(source: Stage1Dataset, batch_records: int) -> Iterator[pa.RecordBatch]:
    """Batches of every stage-1 pool record (columns `question`, `documents`, `label_index`,
    `doc_ids`, and `pool_docs`/`doc_order` where present), in dataset order."""
    for shard in source.shards:
        pf, _ = _open_shard(shard, "pool")
        columns = list(POOL_COLUMNS) + [c for c in ("pool_docs", "doc_order") if c in pf.schema_arrow.names]
        yield from _read(shard, pf, batch_records, columns)
