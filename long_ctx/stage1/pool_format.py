"""Stage 1's format for stage-0 `--mode pool` lines: a question and its row of documents.

`documents` becomes `list<list<uint16>>` (one id list per document, in row order); the other
fields are carried as they are (`doc_ids`, `label_index`, `gold_id`, `bm25_scores`,
`num_documents`, `line_number`, and the settings `pool_docs`, `doc_order`). Runs in workers like
the passage format (`long_ctx.stage1.records.process_chunk`).
"""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from long_ctx.stage1.records import INT32_MAX, TOKENS, _is_int, _list_array, text_column, tokenize_texts

TEXT_COLUMNS = ("question", "answer", "long_answer")
INT_KEYS = ("label_index", "gold_id", "num_documents", "line_number", "pool_docs")
LIST_KEYS = ("documents", "doc_ids", "bm25_scores")
#: Every reason `check` can give besides missing_key:/wrong_type: (documented in docs/stage1.md).
SKIP_REASONS = ("no_documents", "documents_and_ids_differ_in_length", "documents_and_scores_differ_in_length",
                "label_index_out_of_range", "gold_id_is_not_the_labelled_document", "id_out_of_range",
                "non_finite_score")


def schema(keep_text: bool) -> pa.Schema:
    fields = [pa.field(c, TOKENS) for c in TEXT_COLUMNS]
    fields += [
        pa.field("documents", pa.list_(TOKENS)),
        pa.field("doc_ids", pa.list_(pa.int32())),
        pa.field("label_index", pa.int32()),
        pa.field("gold_id", pa.int32()),
        pa.field("bm25_scores", pa.list_(pa.float64())),
        pa.field("num_documents", pa.int32()),
        pa.field("line_number", pa.int64()),
        pa.field("pool_docs", pa.int32()),
        pa.field("doc_order", pa.string()),
    ]
    if keep_text:
        fields += [pa.field(text_column(c), pa.string()) for c in TEXT_COLUMNS]
        fields += [pa.field(text_column("documents"), pa.list_(pa.string()))]
    return pa.schema(fields)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check(obj) -> str | None:
    """None if `obj` is a usable pool line, else the reason to skip it."""
    if not isinstance(obj, dict):
        return "not_an_object"
    for key in (*TEXT_COLUMNS, *LIST_KEYS, *INT_KEYS, "doc_order"):
        if key not in obj:
            return f"missing_key:{key}"
    for key in (*TEXT_COLUMNS, "doc_order"):
        if not isinstance(obj[key], str):
            return f"wrong_type:{key}"
    docs, ids, scores = obj["documents"], obj["doc_ids"], obj["bm25_scores"]
    if not isinstance(docs, list) or not all(isinstance(s, str) for s in docs):
        return "wrong_type:documents"
    if not isinstance(ids, list) or not all(_is_int(i) for i in ids):
        return "wrong_type:doc_ids"
    if not isinstance(scores, list) or not all(_is_number(x) for x in scores):
        return "wrong_type:bm25_scores"
    for key in INT_KEYS:
        if not _is_int(obj[key]):
            return f"wrong_type:{key}"
    if not docs:
        return "no_documents"
    if len(ids) != len(docs):
        return "documents_and_ids_differ_in_length"
    if len(scores) != len(docs):
        return "documents_and_scores_differ_in_length"
    if not all(0 <= i <= INT32_MAX for i in (*ids, obj["gold_id"], obj["num_documents"], obj["pool_docs"])):
        return "id_out_of_range"
    if not 0 <= obj["line_number"] < 2**63:
        return "id_out_of_range"
    if not 0 <= obj["label_index"] < len(docs):
        return "label_index_out_of_range"
    if ids[obj["label_index"]] != obj["gold_id"]:
        return "gold_id_is_not_the_labelled_document"
    if not all(math.isfinite(x) for x in scores):
        return "non_finite_score"
    return None


def encode(records: list[dict], keep_text: bool) -> pa.RecordBatch:
    """Token ids of valid pool records as one Arrow batch with `schema(keep_text)`."""
    n = len(records)
    # Questions, answers, long answers, then every document of every record.
    texts = [r[c] for c in TEXT_COLUMNS for r in records]
    texts += [d for r in records for d in r["documents"]]
    ids_column = tokenize_texts(texts)
    columns = {c: ids_column(i * n, n) for i, c in enumerate(TEXT_COLUMNS)}
    outer = np.zeros(n + 1, dtype=np.int64)
    np.cumsum([len(r["documents"]) for r in records], out=outer[1:])
    columns["documents"] = _list_array(outer, ids_column(len(TEXT_COLUMNS) * n, int(outer[-1])))
    columns["doc_ids"] = _list_array(outer, pa.array([i for r in records for i in r["doc_ids"]], pa.int32()))
    columns["bm25_scores"] = _list_array(
        outer, pa.array([float(x) for r in records for x in r["bm25_scores"]], pa.float64()))
    for key, typ in (("label_index", pa.int32()), ("gold_id", pa.int32()), ("num_documents", pa.int32()),
                     ("line_number", pa.int64()), ("pool_docs", pa.int32()), ("doc_order", pa.string())):
        columns[key] = pa.array([r[key] for r in records], typ)
    if keep_text:
        for c in TEXT_COLUMNS:
            columns[text_column(c)] = pa.array([r[c] for r in records], pa.string())
        columns[text_column("documents")] = pa.array([r["documents"] for r in records], pa.list_(pa.string()))
    sch = schema(keep_text)
    return pa.RecordBatch.from_arrays([columns[f.name] for f in sch], schema=sch)


class PoolFormat:
    """Stage 0's pool records."""

    name = "pool"
    #: `documents`: every document's length; `row`: question + SEP + every document + its CLS,
    #: the length the record's stage-2 row needs untruncated (pick --max_length from it).
    length_columns = (*TEXT_COLUMNS, "documents", "row")
    plot_series = {"question": "question", "document (all)": "documents", "whole row (q + SEP + docs + CLSs)": "row"}
    summary_columns = ("question", "documents", "row")
    token_columns = (*TEXT_COLUMNS, "documents")
    card_intro = ("Mode `pool`: one record per question holding its row of documents. `documents` are the "
                  "token ids of every document in row order; `doc_ids` their 1-based numbers in the source "
                  "pool; `label_index` the 0-based position of the gold in `documents` (`doc_ids[label_index] "
                  "== gold_id`); `bm25_scores` each document's BM25 score for the question; `num_documents` the "
                  "source pool's size; `pool_docs` and `doc_order` the stage-0 settings; `line_number` the 0-based "
                  "line of the source NQ file. The `row` length is what stage 2 needs for the whole row "
                  "(question + SEP + every document + its CLS).")

    check = staticmethod(check)
    schema = staticmethod(schema)
    encode = staticmethod(encode)

    def lengths(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        import pyarrow.compute as pc  # main process only

        out = {c: pc.list_value_length(batch.column(c)).to_numpy(zero_copy_only=False) for c in TEXT_COLUMNS}
        docs = batch.column("documents")
        out["documents"] = pc.list_value_length(docs.flatten()).to_numpy(zero_copy_only=False)
        per_doc = out["documents"].astype(np.int64) + 1  # + its CLS
        outer = docs.offsets.to_numpy().astype(np.int64)
        outer = outer - outer[0]
        summed = np.add.reduceat(per_doc, outer[:-1]) if per_doc.size else np.zeros(len(docs), np.int64)
        out["row"] = out["question"].astype(np.int64) + 1 + summed
        return out


FORMAT = PoolFormat()
