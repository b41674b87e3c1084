"""Stage 2's rows: `question [SEP] document [CLS] PAD…`, one at a time and a whole batch at once.

`build_row` is the one-row definition (the evaluator and the reranker use it too); `pack_rows`
builds a whole batch with numpy and must agree with it row for row.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import pyarrow as pa

from long_ctx.common.dataset_card import length_table

MAX_TOKEN_ID = 65535  # rows are stored as uint16


def special_ids_note(rows: int) -> str:
    """The dataset card's warning about rows whose text contains a SEP/CLS/PAD id ("" for none)."""
    if not rows:
        return ""
    return (f"\n\n{rows:,} row(s) contain a SEP/CLS/PAD id inside their text; choose ids outside the vocab "
            "(65530..65535) to avoid that.")


def card_sections(s: dict, settings: str, counts: str, lengths: dict, plot_file: str,
                  padding_file: str) -> list[tuple[str, str]]:
    """The dataset card's sections shared by passage and pool rows (`s`: the padding.json summary)."""
    return [
        ("Settings", settings),
        ("Counts", counts + special_ids_note(s["rows_with_special_ids_in_text"])),
        ("Row lengths", length_table(lengths) + f"\n\n![row lengths]({plot_file})"),
        ("Files", f"Shards: {', '.join(s['shards'])}. Full summary: `{padding_file}`."),
    ]


OUTPUT_SCHEMA = pa.schema(
    [
        pa.field("input_ids", pa.list_(pa.uint16())),  # exactly max_length ids
        pa.field("labels", pa.int8()),  # 1 positive, 0 negative
        pa.field("length", pa.int32()),  # real tokens incl. CLS; CLS at length-1
        pa.field("group", pa.int64()),  # 0-based row index of the source record in stage 1
    ]
)


def build_row(
    question_ids: Sequence[int],
    doc_ids: Sequence[int],
    max_length: int,
    sep: int,
    cls: int,
    pad: int,
    truncate: bool,
) -> tuple[list[int] | None, int, bool]:
    """One cross-encoder row: `question + [sep] + doc + [cls]`, right-padded with `pad` to max_length.

    Returns (row, length, truncated). `length` counts real tokens including CLS (CLS sits at
    length-1, SEP at len(question kept)). When the row does not fit: with `truncate` the document's
    tail is cut, and if the question alone leaves no room, the question's tail too (document then
    empty); SEP and CLS are always kept. Without `truncate` the row is None and `length` is the
    length it would have needed.
    """
    if max_length < 3:
        raise ValueError(f"max_length must be >= 3 (question/SEP/CLS), got {max_length}")
    q, d = list(question_ids), list(doc_ids)
    needed = len(q) + len(d) + 2
    truncated = needed > max_length
    if truncated:
        if not truncate:
            return None, needed, False
        q = q[: max_length - 2]
        d = d[: max_length - 2 - len(q)]
    row = q + [sep] + d + [cls]
    length = len(row)
    return row + [pad] * (max_length - length), length, truncated


# ---------------------------------------------------------------------------------------------
# Vectorized batch packing


def _ragged_arange(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """concat(arange(s, s + n) for s, n in zip(starts, lengths)), without a Python loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    return np.repeat(starts - (ends - lengths), lengths) + np.arange(total)


def _list_parts(arr: pa.ListArray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets [n+1], values) of a possibly sliced list array; offsets index into `values`."""
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = arr.values.to_numpy(zero_copy_only=False)
    if values.dtype != np.uint16:
        used = values[offsets[0] : offsets[-1]]
        if used.size and (used.min() < 0 or used.max() > MAX_TOKEN_ID):
            raise ValueError(f"token ids must be in 0..{MAX_TOKEN_ID}; found {used.min()}..{used.max()}")
        values = values.astype(np.uint16)
    return offsets, values


@dataclasses.dataclass
class PackResult:
    batch: pa.RecordBatch  # kept rows, OUTPUT_SCHEMA
    needed_lengths: np.ndarray  # [candidate rows] q + d + 2 before truncation/dropping
    groups: int  # source records in this batch
    kept_groups: int
    truncated_rows: int
    dropped_rows: int
    rows_per_group: np.ndarray  # [kept groups]
    special_id_rows: int  # kept rows whose text itself contains a sep/cls/pad id


def pack_rows(
    question: pa.ListArray,
    positive: pa.ListArray,
    negatives: pa.ListArray,
    max_length: int,
    sep: int,
    cls: int,
    pad: int,
    truncate: bool,
    first_group: int = 0,
) -> PackResult:
    """All rows of a batch of stage-1 records (same rules as `build_row`).

    question/positive: list<int> [B]; negatives: list<list<int>> [B]; groups are numbered from
    `first_group`.
    """
    L = max_length
    B = len(question)
    q_off, q_vals = _list_parts(question)
    p_off, p_vals = _list_parts(positive)
    n_off = negatives.offsets.to_numpy().astype(np.int64)  # [B+1] into the inner lists
    i_off, i_vals = _list_parts(negatives.values)
    i_off = i_off[n_off[0] : n_off[-1] + 1]  # [negatives in this batch + 1]

    k = np.diff(n_off)  # [B] negatives per record
    rows = 1 + k  # [B]
    row_start = np.zeros(B + 1, dtype=np.int64)
    np.cumsum(rows, out=row_start[1:])
    R = int(row_start[-1])
    record = np.repeat(np.arange(B), rows)  # [R] source record of each row
    is_pos = np.zeros(R, dtype=bool)
    is_pos[row_start[:-1]] = True

    # Documents of all rows in row order, as (start, length) into one buffer: positives first, then
    # negatives shifted past them (negatives are record-major, which is row order).
    values = np.concatenate([p_vals, i_vals])
    d_start = np.empty(R, dtype=np.int64)
    d_len = np.empty(R, dtype=np.int64)
    d_start[is_pos] = p_off[:-1]
    d_len[is_pos] = np.diff(p_off)
    d_start[~is_pos] = i_off[:-1] + len(p_vals)
    d_len[~is_pos] = np.diff(i_off)
    q_start = q_off[:-1][record]
    q_len = np.diff(q_off)[record]

    needed = q_len + d_len + 2  # [R]
    too_long = needed > L
    if truncate:
        keep = np.ones(R, dtype=bool)
        qk = np.minimum(q_len, L - 2)
        dk = np.minimum(d_len, L - 2 - qk)
    else:
        bad_group = np.add.reduceat(too_long.astype(np.int64), row_start[:-1]) > 0 if B else np.zeros(0, bool)
        keep = ~bad_group[record]
        qk, dk = q_len, d_len

    kept = np.flatnonzero(keep)
    Rk = len(kept)
    qk, dk = qk[kept], dk[kept]
    lengths = qk + dk + 2
    out = np.full((Rk, L), pad, dtype=np.uint16)  # [Rk, L]
    flat = out.reshape(-1)
    base = np.arange(Rk, dtype=np.int64) * L
    q_src = _ragged_arange(q_start[kept], qk)
    q_tok = q_vals[q_src]
    flat[_ragged_arange(base, qk)] = q_tok
    flat[base + qk] = sep
    d_src = _ragged_arange(d_start[kept], dk)
    d_tok = values[d_src]
    flat[_ragged_arange(base + qk + 1, dk)] = d_tok
    flat[base + qk + dk + 1] = cls

    specials = np.array([sep, cls, pad], dtype=np.uint16)
    special_rows = np.union1d(
        np.repeat(np.arange(Rk), qk)[np.isin(q_tok, specials)],
        np.repeat(np.arange(Rk), dk)[np.isin(d_tok, specials)],
    )
    kept_record = record[kept]
    kept_groups = np.unique(kept_record)
    batch = pa.RecordBatch.from_arrays(
        [
            pa.ListArray.from_arrays(pa.array(np.arange(Rk + 1, dtype=np.int64) * L, pa.int32()), pa.array(flat, pa.uint16())),
            pa.array(is_pos[kept].astype(np.int8), pa.int8()),
            pa.array(lengths.astype(np.int32), pa.int32()),
            pa.array(kept_record + first_group, pa.int64()),
        ],
        schema=OUTPUT_SCHEMA,
    )
    return PackResult(
        batch=batch,
        needed_lengths=needed,
        groups=B,
        kept_groups=len(kept_groups),
        truncated_rows=int((too_long & keep).sum()),
        dropped_rows=R - Rk,
        rows_per_group=rows[kept_groups],
        special_id_rows=len(special_rows),
    )
