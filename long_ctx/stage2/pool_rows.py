"""Stage 2's pool rows: `question [SEP] d_1 [CLS] d_2 [CLS] … d_k [CLS] PAD…`, one row per question.

`build_pool_row` is the one-row definition (the reranker builds its scoring windows the same
way); `pack_pool_rows` builds the Arrow batch of many records with it. A score is read at every
CLS; RWKV is causal, so the score at CLS i sees the question and documents 1..i only.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import pyarrow as pa

from long_ctx.stage2.rows import _list_parts

POOL_SCHEMA = pa.schema(
    [
        pa.field("input_ids", pa.list_(pa.uint16())),  # exactly max_length ids
        pa.field("length", pa.int32()),  # real tokens; the last CLS is at length-1
        pa.field("cls_positions", pa.list_(pa.int32())),  # one per document, increasing
        pa.field("labels", pa.list_(pa.int8())),  # one per document: exactly one 1 (the gold)
        pa.field("group", pa.int64()),  # 0-based index of the source record in stage 1
        pa.field("doc_ids", pa.list_(pa.int32())),  # 1-based ids in the source pool, row order
    ]
)


@dataclasses.dataclass
class PoolRow:
    ids: np.ndarray | None  # [max_length] uint16, right-padded; None when dropped
    length: int  # real tokens (last CLS at length-1); the needed length when dropped
    sep_position: int  # = the kept question's length
    cls_positions: list[int]  # [k] position of each kept document's CLS
    kept: list[int]  # [k] indices into the input documents, in row order
    label_index: int  # position of the gold among the kept documents
    needed: int  # question + SEP + every document + its CLS, before truncation
    dropped_documents: int  # negatives dropped to fit
    cut: bool  # the gold's (and maybe the question's) tail had to be cut


def build_pool_row(question_ids: Sequence[int], docs_ids: Sequence[Sequence[int]], label_index: int,
                   max_length: int, sep: int, cls: int, pad: int, truncate: bool) -> PoolRow:
    """One pool row: `question + [sep] + d_1 + [cls] + … + d_k + [cls]`, right-padded to max_length.

    When it does not fit: with `truncate`, negatives are dropped from the end of the list (never
    the gold, index `label_index`) until it fits; only if the question + gold alone do not fit is
    the gold's tail cut (and if the question alone leaves no room, the question's tail too, the
    gold then empty). SEP and every kept document's CLS are always present. Without `truncate`
    the row is dropped (`ids` None, `length` = the needed length).
    """
    if max_length < 3:
        raise ValueError(f"max_length must be >= 3 (question/SEP/CLS), got {max_length}")
    if not 0 <= label_index < len(docs_ids):
        raise ValueError(f"label_index {label_index} outside a row of {len(docs_ids)} documents")
    q = np.asarray(question_ids, dtype=np.uint16)
    docs = [np.asarray(d, dtype=np.uint16) for d in docs_ids]
    needed = len(q) + 1 + sum(len(d) + 1 for d in docs)
    keep = list(range(len(docs)))
    cut = False
    if needed > max_length:
        if not truncate:
            return PoolRow(None, needed, len(q), [], [], label_index, needed, 0, False)
        total = needed
        for i in range(len(docs) - 1, -1, -1):
            if total <= max_length:
                break
            if i != label_index:
                keep.remove(i)
                total -= len(docs[i]) + 1
        if total > max_length:  # only the gold is left, and it does not fit either
            cut = True
            q = q[: max_length - 2]
            docs[label_index] = docs[label_index][: max_length - 2 - len(q)]
    parts, positions = [q, np.array([sep], np.uint16)], []
    at = len(q) + 1
    for i in keep:
        parts += [docs[i], np.array([cls], np.uint16)]
        at += len(docs[i])
        positions.append(at)
        at += 1
    row = np.full(max_length, pad, dtype=np.uint16)
    real = np.concatenate(parts)
    row[: real.size] = real
    return PoolRow(row, int(real.size), len(q), positions, keep, keep.index(label_index), needed,
                   len(docs) - len(keep), cut)


@dataclasses.dataclass
class PoolPack:
    batch: pa.RecordBatch  # kept rows, POOL_SCHEMA
    needed_lengths: np.ndarray  # [records] before truncation/dropping
    documents: np.ndarray  # [kept rows] documents per row
    kept_rows: int
    dropped_rows: int  # --no-is_truncate: rows that did not fit
    dropped_documents: int  # negatives dropped by --is_truncate
    rows_with_dropped_documents: int
    cut_rows: int  # rows whose gold (or question) tail was cut
    truncated_rows: int  # rows that lost documents or had the gold cut
    special_id_rows: int  # kept rows whose text itself contains a sep/cls/pad id


def pack_pool_rows(question: pa.ListArray, documents: pa.ListArray, label_index: pa.Array, doc_ids: pa.ListArray,
                   max_length: int, sep: int, cls: int, pad: int, truncate: bool, first_group: int = 0) -> PoolPack:
    """The rows of a batch of stage-1 pool records (`build_pool_row` each); groups are numbered
    from `first_group` (the record's index in stage 1)."""
    # Views into the batch's flat id buffers (no Python lists of token ids).
    q_off, q_vals = _list_parts(question)
    d_outer = documents.offsets.to_numpy().astype(np.int64)  # [B+1] into the inner lists
    d_off, d_vals = _list_parts(documents.values)
    labels = label_index.to_pylist()
    ids = doc_ids.to_pylist()
    qs = [q_vals[a:b] for a, b in zip(q_off[:-1], q_off[1:])]
    docs = [[d_vals[d_off[j]:d_off[j + 1]] for j in range(a, b)] for a, b in zip(d_outer[:-1], d_outer[1:])]
    specials = np.array([sep, cls, pad], dtype=np.uint16)
    cols: dict[str, list] = {f.name: [] for f in POOL_SCHEMA}
    needed, per_row = [], []
    dropped = dropped_docs = with_dropped = cut = special = truncated = 0
    for r, (q, d, li, di) in enumerate(zip(qs, docs, labels, ids)):
        row = build_pool_row(q, d, li, max_length, sep, cls, pad, truncate)
        needed.append(row.needed)
        if row.ids is None:
            dropped += 1
            continue
        dropped_docs += row.dropped_documents
        with_dropped += row.dropped_documents > 0
        cut += row.cut
        truncated += row.cut or row.dropped_documents > 0
        text = np.delete(row.ids[: row.length], [row.sep_position, *row.cls_positions])
        special += bool(np.isin(text, specials).any())
        labels_row = [0] * len(row.kept)
        labels_row[row.label_index] = 1
        cols["input_ids"].append(row.ids)
        cols["length"].append(row.length)
        cols["cls_positions"].append(row.cls_positions)
        cols["labels"].append(labels_row)
        cols["group"].append(first_group + r)
        cols["doc_ids"].append([di[i] for i in row.kept])
        per_row.append(len(row.kept))
    n = len(cols["length"])
    L = max_length
    flat = np.concatenate(cols["input_ids"]) if n else np.zeros(0, np.uint16)
    arrays = [
        pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int64) * L, pa.int32()),
                                 pa.array(flat, pa.uint16())),
        pa.array(cols["length"], pa.int32()),
        pa.array(cols["cls_positions"], pa.list_(pa.int32())),
        pa.array(cols["labels"], pa.list_(pa.int8())),
        pa.array(cols["group"], pa.int64()),
        pa.array(cols["doc_ids"], pa.list_(pa.int32())),
    ]
    return PoolPack(pa.RecordBatch.from_arrays(arrays, schema=POOL_SCHEMA), np.asarray(needed, np.int64),
                    np.asarray(per_row, np.int64), n, dropped, dropped_docs, with_dropped, cut, truncated, special)
