"""Streaming parquet shard writer with Hugging Face shard names (and page checksums).

Row groups and shard boundaries are cut at fixed row counts (not where incoming batches happen to
end), so the bytes written depend only on the rows and the settings, never on how the producer
chunked its work or how many worker processes it used.
"""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from long_ctx.common.dataset_card import shard_name


class ShardWriter:
    """Append record batches; `close()` names the shards `train-XXXXX-of-YYYYY.parquet`.

    Memory is bounded by one row group of pending rows.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        schema: pa.Schema,
        rows_per_shard: int,
        row_group_rows: int,
        compression: str = "zstd",
        use_dictionary: bool | list[str] = True,
    ) -> None:
        if rows_per_shard < 1 or row_group_rows < 1:
            raise ValueError("rows_per_shard and row_group_rows must be >= 1")
        self.out_dir = Path(out_dir)
        self.schema = schema
        self.rows_per_shard = rows_per_shard
        self.row_group_rows = min(row_group_rows, rows_per_shard)
        self.compression = compression
        # uint16 ids have at most 65,536 distinct values, so a dictionary page (1 MB limit) never
        # overflows: dictionary encoding cut stage-1 shards by ~30% at a similar write cost.
        self.use_dictionary = use_dictionary
        self.num_rows = 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._shard_rows = 0
        self._parts: list[Path] = []

    def _open(self, part: Path) -> pq.ParquetWriter:
        # Page checksums (CRC32): a reader that verifies them (stage 2 does) turns a flipped bit
        # in the data into an error naming the file instead of silently different token ids.
        return pq.ParquetWriter(part, self.schema, compression=self.compression,
                                use_dictionary=self.use_dictionary, write_page_checksum=True)

    def write(self, batch: pa.RecordBatch | pa.Table | None) -> None:
        if batch is None or batch.num_rows == 0:
            return
        if batch.schema != self.schema:
            batch = batch.cast(self.schema)
        self._pending.extend(batch.to_batches() if isinstance(batch, pa.Table) else [batch])
        self._pending_rows += batch.num_rows
        while self._pending_rows >= self._next_cut():
            self._flush(self._next_cut())

    def _next_cut(self) -> int:
        return min(self.row_group_rows, self.rows_per_shard - self._shard_rows)

    def _flush(self, n: int) -> None:
        table = pa.Table.from_batches(self._pending, schema=self.schema)
        head, rest = table.slice(0, n), table.slice(n)
        if self._writer is None:
            part = self.out_dir / f".part-{len(self._parts):05d}.parquet"
            self._parts.append(part)
            self._writer = self._open(part)
        self._writer.write_table(head, row_group_size=n)
        self._shard_rows += n
        self.num_rows += n
        if self._shard_rows >= self.rows_per_shard:
            self._writer.close()
            self._writer, self._shard_rows = None, 0
        self._pending = rest.to_batches()
        self._pending_rows = rest.num_rows

    def close(self) -> list[Path]:
        """Write what is pending, close, and rename parts to their final names (returned)."""
        if self._pending_rows:
            self._flush(self._pending_rows)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if not self._parts:
            # An empty dataset still gets one shard so the schema is recorded and it loads.
            # No row group at all: `datasets` derives its batch size from the first row group and
            # fails on a 0-row one.
            part = self.out_dir / ".part-00000.parquet"
            self._open(part).close()
            self._parts.append(part)
        final = []
        for i, part in enumerate(self._parts):
            target = self.out_dir / shard_name(i, len(self._parts))
            os.replace(part, target)
            final.append(target)
        return final
