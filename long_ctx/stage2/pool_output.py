"""Stage 2 on pool data: every stage-1 pool record -> one pool row (`long_ctx.stage2.pool_rows`),
shards, `padding.json` (`row_format: "pool"`), the card and the row-length plot.

Called by `long_ctx.stage2.driver.main` inside its atomic output folder when the stage-1 dataset's
mode is `pool`; passage data never comes here.
"""
from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import Any


from long_ctx.common.atomic import write_json
from long_ctx.common.dataset_card import markdown_table, write_dataset_card
from long_ctx.common.lengths import LengthCounter, plot_length_histograms
from long_ctx.common.parquet_shards import ShardWriter
from long_ctx.common.progress import progress_bar
from long_ctx.stage2.pool_rows import POOL_SCHEMA, pack_pool_rows
from long_ctx.stage2.rows import card_sections
from long_ctx.stage2.source import Stage1Dataset, iter_pool_batches

ROW_FORMAT = "pool"
ROW_FORMAT_TEXT = "question + [SEP] + d_1 + [CLS] + ... + d_k + [CLS], right-padded with PAD to max_length"


def _setting(values: set) -> Any:
    """A setting every record shares, or None when the records disagree (or do not say)."""
    return next(iter(values)) if len(values) == 1 else None


def write_pool_dataset(config, source: Stage1Dataset, tmp: Path, name: str, sizes: tuple[int, int, int],
                       files: tuple[str, str, str]) -> dict[str, Any]:
    """Write the pool rows of `source` into the folder `tmp`; returns the padding.json summary.

    sizes: (rows per shard, rows per row group, rows per packed batch); files: the padding.json,
    plot and card names.
    """
    start = time.perf_counter()
    L = config.max_length
    rows_per_shard, row_group_rows, max_rows_per_pack = sizes
    padding_file, plot_file, card_file = files
    real, needed, docs = LengthCounter(), LengthCounter(), LengthCounter()
    counts: collections.Counter = collections.Counter()
    pool_docs, doc_order = set(), set()
    group = 0
    writer = ShardWriter(tmp, POOL_SCHEMA, rows_per_shard, row_group_rows, compression="zstd", use_dictionary=False)
    bar = progress_bar(total=source.num_records, unit="rec", desc="stage 2", disable=not config.progress)
    with bar:
        for batch in iter_pool_batches(source, min(config.read_batch_records, max_rows_per_pack)):
            names = batch.schema.names
            if "pool_docs" in names:
                pool_docs.update(batch.column("pool_docs").to_pylist())
                doc_order.update(batch.column("doc_order").to_pylist())
            else:
                pool_docs.add(None)
                doc_order.add(None)
            res = pack_pool_rows(batch.column("question"), batch.column("documents"), batch.column("label_index"),
                                 batch.column("doc_ids"), L, config.sep_token_id, config.cls_token_id,
                                 config.pad_token_id, config.is_truncate, first_group=group)
            group += batch.num_rows
            writer.write(res.batch)
            real.add(res.batch.column("length").to_numpy())
            needed.add(res.needed_lengths)
            docs.add(res.documents)
            counts.update(records=batch.num_rows, rows=res.kept_rows, dropped_rows=res.dropped_rows,
                          dropped_documents=res.dropped_documents, rows_with_dropped=res.rows_with_dropped_documents,
                          cut_rows=res.cut_rows, truncated_rows=res.truncated_rows,
                          special_id_rows=res.special_id_rows)
            bar.update(batch.num_rows)
    shards = writer.close()
    elapsed = time.perf_counter() - start
    n = counts["rows"]
    summary = {
        "max_length": L,
        "sep_token_id": config.sep_token_id,
        "cls_token_id": config.cls_token_id,
        "pad_token_id": config.pad_token_id,
        "is_truncate": config.is_truncate,
        "row_format": ROW_FORMAT,
        "row_layout": ROW_FORMAT_TEXT,
        "num_rows": n,
        # One row per question: a group is a row.
        "num_groups": n,
        "source_records": counts["records"],
        "kept_groups": n,
        "dropped_groups": counts["dropped_rows"],
        "dropped_rows": counts["dropped_rows"],
        "dropped_documents": counts["dropped_documents"],
        "rows_with_dropped_documents": counts["rows_with_dropped"],
        "rows_with_gold_cut": counts["cut_rows"],
        "truncated_rows": counts["truncated_rows"],  # rows that lost documents or had the gold cut
        "rows_per_group": 1 if n else 0,
        "rows_per_group_min": 1 if n else 0,
        "documents_per_row": docs.summary(),
        "pool_docs": _setting(pool_docs),
        "doc_order": _setting(doc_order),
        "rows_with_special_ids_in_text": counts["special_id_rows"],
        "length": real.summary(),
        "needed_length": needed.summary(),
        "pad_fraction": round(1 - real.total / (n * L), 6) if n else 0.0,
        "source_dir": str(Path(config.ds_dir).resolve()),
        "columns": {f.name: str(f.type) for f in POOL_SCHEMA},
        "shards": [p.name for p in shards],
        "elapsed_s": round(elapsed, 3),
        "rows_per_s": round(n / elapsed, 1) if elapsed > 0 else None,
    }
    write_json(tmp / padding_file, summary)
    plot_length_histograms(
        {"needed (question + SEP + every document + its CLS)": needed, "kept rows (real tokens)": real},
        tmp / plot_file, title=f"Stage 2 pool row lengths vs max_length: {name}", max_length=L,
    )
    _write_card(tmp / card_file, summary, name, padding_file, plot_file)
    return summary


def _write_card(path: Path, s: dict, name: str, padding_file: str, plot_file: str) -> None:
    settings = markdown_table(
        ["max_length", "sep_token_id", "cls_token_id", "pad_token_id", "is_truncate", "pool_docs", "doc_order"],
        [[s["max_length"], s["sep_token_id"], s["cls_token_id"], s["pad_token_id"], str(s["is_truncate"]),
          s["pool_docs"], s["doc_order"]]],
    )
    d = s["documents_per_row"]
    counts = markdown_table(
        ["rows", "rows dropped", "documents dropped", "rows with the gold cut", "documents/row (min/mean/max)",
         "pad fraction"],
        [[s["num_rows"], s["dropped_rows"], s["dropped_documents"], s["rows_with_gold_cut"],
          f"{d['min']}/{d['mean']}/{d['max']}", s["pad_fraction"]]],
    )
    write_dataset_card(
        path,
        title=f"{name}: pool rows (stage 2)",
        intro=(
            f"One row per question: `{ROW_FORMAT_TEXT}` (max_length {s['max_length']}), built from the stage-1 "
            f"pool dataset `{s['source_dir']}`. Columns: `input_ids` (uint16, exactly max_length), `length` (real "
            "tokens; the last CLS at `length-1`), `cls_positions` (the position of each document's CLS, "
            "increasing), `labels` (one per document, exactly one 1: the gold), `group` (0-based index of the "
            "source record), `doc_ids` (1-based document numbers in the source pool, row order). A row too long "
            "for max_length lost negatives from the end of its list (never the gold); only a question + gold that "
            f"alone do not fit had the gold's tail cut. Read the special ids from `{padding_file}`. Load with "
            "`datasets.load_dataset(DIR, split=\"train\")`."
        ),
        sections=card_sections(s, settings, counts, {"row (kept)": s["length"], "needed before truncation":
                               s["needed_length"], "documents per row": s["documents_per_row"]},
                               plot_file, padding_file),
    )


def print_pool_summary(s: dict, out_dir: Path) -> None:
    d, ln = s["documents_per_row"], s["length"]
    print(f"stage 2: {s['num_rows']:,} pool rows of {s['max_length']} ids from {s['source_records']:,} records -> "
          f"{out_dir} ({s['elapsed_s']:.1f} s, {s['rows_per_s'] or 0:,.0f} rows/s)")
    print(f"  documents/row: mean {d['mean']:.1f}, min {d['min']}, max {d['max']}; dropped documents "
          f"{s['dropped_documents']:,} (in {s['rows_with_dropped_documents']:,} rows), rows with the gold cut "
          f"{s['rows_with_gold_cut']:,}, dropped rows {s['dropped_rows']:,}")
    print(f"  real length: mean {ln['mean']:.1f}, p50 {ln['p50']}, p90 {ln['p90']}, max {ln['max']}; "
          f"pad fraction {s['pad_fraction']:.3f}")
    if s["rows_with_special_ids_in_text"]:
        print(f"  warning: {s['rows_with_special_ids_in_text']:,} row(s) contain a SEP/CLS/PAD id inside their text")
