"""Stage 1's format for stage-0 `--mode window` lines: the passage columns plus the windows' own.

A window line carries the passage fields (its `positive` and `negatives` are window texts)
except `negative_ids`, which becomes `negative_doc_ids` (one list of document ids per negative
window), plus `positive_doc_ids`, `gold_position`, `positive_tokens`, `negative_tokens` and
`context_tokens` (see docs/stage0.md). They are checked and carried as columns; the token ids
are the passage format's.
"""
from __future__ import annotations

import numbers

import pyarrow as pa

from long_ctx.stage1.records import INT32_MAX, PassageFormat, _is_int, check_record, encode_records, output_schema

#: Columns after `gold_id`, in this order.
WINDOW_FIELDS = (
    pa.field("positive_doc_ids", pa.list_(pa.int32())),
    pa.field("negative_doc_ids", pa.list_(pa.list_(pa.int32()))),
    pa.field("gold_position", pa.float64()),
    pa.field("positive_tokens", pa.int32()),
    pa.field("negative_tokens", pa.list_(pa.int32())),
    pa.field("context_tokens", pa.int32()),
)


def _int_list(v) -> bool:
    return isinstance(v, list) and all(_is_int(i) and 0 <= i <= INT32_MAX for i in v)


def check_window(obj) -> str | None:
    """None if `obj` is a usable window line, else the reason to skip it."""
    if not isinstance(obj, dict):
        return "not_an_object"
    for f in WINDOW_FIELDS:
        if f.name not in obj:
            return f"missing_key:{f.name}"
    if not (_int_list(obj["positive_doc_ids"]) and obj["positive_doc_ids"]):
        return "wrong_type:positive_doc_ids"
    windows = obj["negative_doc_ids"]
    if not (isinstance(windows, list) and all(_int_list(w) and w for w in windows)):
        return "wrong_type:negative_doc_ids"
    if not _int_list(obj["negative_tokens"]):
        return "wrong_type:negative_tokens"
    for key in ("positive_tokens", "context_tokens"):
        if not (_is_int(obj[key]) and 0 <= obj[key] <= INT32_MAX):
            return f"wrong_type:{key}"
    g = obj["gold_position"]
    if not (isinstance(g, numbers.Real) and not isinstance(g, bool) and 0 <= g <= 1):
        return "wrong_type:gold_position"
    # The passage checks (negatives, ids, ...), with each negative window's document ids as its id.
    reason = check_record({**obj, "negative_ids": [w[0] for w in windows]})
    if reason:
        return reason
    if not len(windows) == len(obj["negative_tokens"]) == len(obj["negatives"]):
        return "negatives_and_windows_differ_in_length"
    return None


class WindowFormat(PassageFormat):
    name = "window"
    card_intro = (
        "Rows are multi-document windows (stage 0 `--mode window`): `positive` is a window holding the gold "
        "document, each of `negatives` a window of other documents within the tolerance of the positive's "
        "length (`negative` is the first). `positive_doc_ids` lists the window's 1-based document numbers "
        "in window order, `negative_doc_ids` one such list per negative; `gold_position` is the gold's "
        "first token's offset in the positive over its length (0..1); `positive_tokens`, `negative_tokens` "
        "and `context_tokens` are stage 0's counts (the lengths of `positive` and `negatives` here); "
        "`gold_id` is the gold's document number and `line_number` the 0-based line of the source NQ file."
    )

    def check(self, obj) -> str | None:
        return check_window(obj)

    def schema(self, keep_text: bool) -> pa.Schema:
        fields = [f for f in output_schema(keep_text) if f.name != "negative_ids"]
        at = [f.name for f in fields].index("gold_id") + 1
        return pa.schema(fields[:at] + list(WINDOW_FIELDS) + fields[at:])

    def encode(self, records: list[dict], keep_text: bool) -> pa.RecordBatch:
        base = encode_records([{**r, "negative_ids": [w[0] for w in r["negative_doc_ids"]]} for r in records],
                              keep_text)
        columns = {name: base.column(name) for name in base.schema.names}
        columns["positive_doc_ids"] = pa.array([r["positive_doc_ids"] for r in records], pa.list_(pa.int32()))
        columns["negative_doc_ids"] = pa.array([r["negative_doc_ids"] for r in records], pa.list_(pa.list_(pa.int32())))
        columns["gold_position"] = pa.array([float(r["gold_position"]) for r in records], pa.float64())
        columns["positive_tokens"] = pa.array([r["positive_tokens"] for r in records], pa.int32())
        columns["negative_tokens"] = pa.array([r["negative_tokens"] for r in records], pa.list_(pa.int32()))
        columns["context_tokens"] = pa.array([r["context_tokens"] for r in records], pa.int32())
        schema = self.schema(keep_text)
        return pa.RecordBatch.from_arrays([columns[f.name] for f in schema], schema=schema)


FORMAT = WindowFormat()
