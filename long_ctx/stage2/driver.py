"""Stage 2: stage-1 token ids -> fixed-length cross-encoder rows `question [SEP] document [CLS] PAD…`.

One row per (question, document): the positive (label 1) then each negative (label 0), rows of a
source record consecutive (the row definitions live in `long_ctx.stage2.rows`). The stage-1 input
is checked whole first (`long_ctx.stage2.source`), the output folder replaces only an earlier
stage-2 output (and only with `overwrite`).
"""
from __future__ import annotations

import collections
import dataclasses
import time
from pathlib import Path

import numpy as np

from long_ctx.common.atomic import atomic_dir, check_output_dir, write_json
from long_ctx.common.dataset_card import SHARD_GLOB, markdown_table, write_dataset_card
from long_ctx.common.lengths import LengthCounter, plot_length_histograms
from long_ctx.common.parquet_shards import ShardWriter
from long_ctx.common.progress import progress_bar
from long_ctx.stage2.pool_output import print_pool_summary, write_pool_dataset
from long_ctx.stage2.rows import MAX_TOKEN_ID, OUTPUT_SCHEMA, card_sections, pack_rows
from long_ctx.stage2.source import Stage1Dataset, iter_stage1_batches, open_stage1

PADDING_FILE = "padding.json"
PLOT_FILE = "row_lengths.png"
CARD_FILE = "README.md"
#: What makes a folder an earlier stage-2 output: its padding.json with keys only stage 2 writes.
MARKER = {PADDING_FILE: ("max_length", "sep_token_id", "cls_token_id", "pad_token_id", "row_format", "shards")}
#: Every name stage 2 writes into its folder; anything else there is the user's.
OWN_FILES = (SHARD_GLOB, PADDING_FILE, PLOT_FILE, CARD_FILE)


# ---------------------------------------------------------------------------------------------
# Configuration


def default_output_dir(ds_dir: str | Path, max_length: int, cls: int, sep: int, truncate: bool, pad: int) -> Path:
    """The seed's naming: beside DS, `<DS name>_padded_<L>_cls_<c>_sep_<s>_truncate_<T|F>_pad_<p>`."""
    ds = Path(ds_dir).resolve()
    return ds.parent / f"{ds.name}_padded_{max_length}_cls_{cls}_sep_{sep}_truncate_{truncate}_pad_{pad}"


@dataclasses.dataclass
class Stage2Config:
    ds_dir: str
    max_length: int
    sep_token_id: int = 2
    cls_token_id: int = 1
    pad_token_id: int = 0
    is_truncate: bool = True
    output_dir: str | None = None
    rows_per_shard: int | None = None  # None: ~256 MB of ids per shard
    read_batch_records: int = 1_024
    progress: bool = True
    overwrite: bool = False  # replace an earlier stage-2 output at the output folder

    def validate(self) -> Stage1Dataset:
        """Check the flags, the whole stage-1 input and the output folder; returns the input."""
        if not isinstance(self.max_length, int) or self.max_length < 3:
            raise ValueError(f"--max_length must be an integer >= 3 (question, SEP, CLS), got {self.max_length}")
        ids = {"--sep_token_id": self.sep_token_id, "--cls_token_id": self.cls_token_id,
               "--pad_token_id": self.pad_token_id}
        for flag, v in ids.items():
            if not isinstance(v, int) or not 0 <= v <= MAX_TOKEN_ID:
                raise ValueError(f"{flag} must be an integer in 0..{MAX_TOKEN_ID} (rows are uint16), got {v}")
        if len(set(ids.values())) != 3:
            raise ValueError(f"--sep_token_id, --cls_token_id and --pad_token_id must be distinct, got {ids}")
        if self.rows_per_shard is not None and self.rows_per_shard < 1:
            raise ValueError(f"--rows_per_shard must be >= 1, got {self.rows_per_shard}")
        if self.read_batch_records < 1:
            raise ValueError(f"read_batch_records must be >= 1, got {self.read_batch_records}")
        source = open_stage1(self.ds_dir)
        check_output_dir(self.out_path(), MARKER, "stage-2 dataset", inputs=[self.ds_dir],
                         overwrite=self.overwrite, own=OWN_FILES)
        return source

    def out_path(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        return default_output_dir(self.ds_dir, self.max_length, self.cls_token_id, self.sep_token_id,
                                  self.is_truncate, self.pad_token_id)


# ---------------------------------------------------------------------------------------------
# Driver


def _sub_batches(rows: np.ndarray, max_rows: int) -> list[tuple[int, int]]:
    """Record ranges [a, b) holding at most max_rows rows each (at least one record each)."""
    out, a, acc = [], 0, 0
    for i, r in enumerate(rows.tolist()):
        if acc and acc + r > max_rows:
            out.append((a, i))
            a, acc = i, 0
        acc += r
    if a < len(rows):
        out.append((a, len(rows)))
    return out


def main(config: Stage2Config) -> dict:
    """Run stage 2; returns the summary written to `<output>/padding.json`."""
    source = config.validate()
    start = time.perf_counter()
    L = config.max_length
    out_dir = config.out_path()
    row_bytes = 2 * L
    rows_per_shard = config.rows_per_shard or max(1, 2**28 // row_bytes)
    row_group_rows = max(1, min(rows_per_shard, 2**24 // row_bytes))
    max_rows_per_pack = max(1, 2**25 // row_bytes)  # bounds the padded matrix built at once (~32 MB)
    if source.mode == "pool":  # one row per question holding its documents (docs/stage2.md)
        with atomic_dir(out_dir) as tmp:
            summary = write_pool_dataset(config, source, tmp, out_dir.name,
                                         (rows_per_shard, row_group_rows, max_rows_per_pack),
                                         (PADDING_FILE, PLOT_FILE, CARD_FILE))
        print_pool_summary(summary, out_dir)
        return summary

    real, needed = LengthCounter(), LengthCounter()
    counts = collections.Counter()
    rows_per_group_max, rows_per_group_min = 0, None
    group = 0
    bar = progress_bar(total=source.num_records, unit="rec", desc="stage 2", disable=not config.progress)
    with atomic_dir(out_dir) as tmp:
        # Padding compresses to almost nothing with zstd; a dictionary made shards only a third
        # smaller but took 30% longer to write, and writing is most of this stage's time.
        writer = ShardWriter(tmp, OUTPUT_SCHEMA, rows_per_shard, row_group_rows, compression="zstd",
                             use_dictionary=False)
        with bar:
            for question, positive, negatives in iter_stage1_batches(source, config.read_batch_records):
                rows = 1 + np.diff(negatives.offsets.to_numpy())
                for a, b in _sub_batches(rows, max_rows_per_pack):
                    res = pack_rows(question.slice(a, b - a), positive.slice(a, b - a), negatives.slice(a, b - a),
                                    L, config.sep_token_id, config.cls_token_id, config.pad_token_id,
                                    config.is_truncate, first_group=group)
                    group += b - a
                    writer.write(res.batch)
                    real.add(res.batch.column("length").to_numpy())
                    needed.add(res.needed_lengths)
                    counts.update(groups=res.groups, kept_groups=res.kept_groups, rows=res.batch.num_rows,
                                  truncated_rows=res.truncated_rows, dropped_rows=res.dropped_rows,
                                  special_id_rows=res.special_id_rows)
                    if len(res.rows_per_group):
                        rows_per_group_max = max(rows_per_group_max, int(res.rows_per_group.max()))
                        lo = int(res.rows_per_group.min())
                        rows_per_group_min = lo if rows_per_group_min is None else min(rows_per_group_min, lo)
                    bar.update(b - a)
        shards = writer.close()
        elapsed = time.perf_counter() - start
        summary = {
            "max_length": L,
            "sep_token_id": config.sep_token_id,
            "cls_token_id": config.cls_token_id,
            "pad_token_id": config.pad_token_id,
            "is_truncate": config.is_truncate,
            "row_format": "question + [SEP] + document + [CLS], right-padded with PAD to max_length",
            "num_rows": counts["rows"],
            "num_groups": counts["kept_groups"],
            "source_records": counts["groups"],
            "kept_groups": counts["kept_groups"],
            "dropped_groups": counts["groups"] - counts["kept_groups"],
            "dropped_rows": counts["dropped_rows"],
            "truncated_rows": counts["truncated_rows"],
            "rows_per_group": rows_per_group_max,
            "rows_per_group_min": rows_per_group_min or 0,
            "rows_with_special_ids_in_text": counts["special_id_rows"],
            "length": real.summary(),
            "needed_length": needed.summary(),
            "pad_fraction": round(1 - real.total / (counts["rows"] * L), 6) if counts["rows"] else 0.0,
            "source_dir": str(Path(config.ds_dir).resolve()),
            "columns": {f.name: str(f.type) for f in OUTPUT_SCHEMA},
            "shards": [p.name for p in shards],
            "elapsed_s": round(elapsed, 3),
            "rows_per_s": round(counts["rows"] / elapsed, 1) if elapsed > 0 else None,
        }
        write_json(tmp / PADDING_FILE, summary)
        plot_length_histograms(
            {"needed (question + SEP + document + CLS)": needed, "kept rows (real tokens)": real},
            tmp / PLOT_FILE, title=f"Stage 2 row lengths vs max_length: {out_dir.name}", max_length=L,
        )
        _write_card(tmp / CARD_FILE, summary, out_dir.name)
    _print_summary(summary, out_dir)
    return summary


def _write_card(path: Path, s: dict, name: str) -> None:
    settings = markdown_table(
        ["max_length", "sep_token_id", "cls_token_id", "pad_token_id", "is_truncate"],
        [[s["max_length"], s["sep_token_id"], s["cls_token_id"], s["pad_token_id"], str(s["is_truncate"])]],
    )
    counts = markdown_table(
        ["rows", "groups kept", "groups dropped", "rows truncated", "rows per group (max)", "pad fraction"],
        [[s["num_rows"], s["kept_groups"], s["dropped_groups"], s["truncated_rows"], s["rows_per_group"],
          s["pad_fraction"]]],
    )
    write_dataset_card(
        path,
        title=f"{name}: padded cross-encoder rows (stage 2)",
        intro=(
            f"Rows `question + [SEP] + document + [CLS]`, right-padded to {s['max_length']} with the PAD id, "
            f"built from the stage-1 dataset `{s['source_dir']}`. Columns: `input_ids` (uint16, exactly "
            "max_length), `labels` (1 positive, 0 negative), `length` (real tokens incl. CLS; CLS at "
            "`length-1`), `group` (0-based index of the source record; rows of a group are consecutive, "
            f"positive first). Read the special ids from `{PADDING_FILE}` instead of assuming them. "
            "Load with `datasets.load_dataset(DIR, split=\"train\")`."
        ),
        sections=card_sections(s, settings, counts, {"row (kept)": s["length"], "needed before truncation":
                                                     s["needed_length"]}, PLOT_FILE, PADDING_FILE),
    )


def _print_summary(s: dict, out_dir: Path) -> None:
    print(f"stage 2: {s['num_rows']:,} rows of {s['max_length']} ids from {s['kept_groups']:,}/"
          f"{s['source_records']:,} groups -> {out_dir} ({s['elapsed_s']:.1f} s, {s['rows_per_s'] or 0:,.0f} rows/s)")
    print(f"  truncated rows {s['truncated_rows']:,}, dropped groups {s['dropped_groups']:,} "
          f"({s['dropped_rows']:,} rows), pad fraction {s['pad_fraction']:.3f}")
    ln = s["length"]
    print(f"  real length: mean {ln['mean']:.1f}, p50 {ln['p50']}, p90 {ln['p90']}, p99 {ln['p99']}, max {ln['max']}")
    if s["rows_with_special_ids_in_text"]:
        print(f"  warning: {s['rows_with_special_ids_in_text']:,} row(s) contain a SEP/CLS/PAD id inside their text")
