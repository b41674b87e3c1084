"""Row building: invariants of `build_row`, and the vectorized `pack_rows` against a plain oracle."""
from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from long_ctx.stage2 import build_row, pack_rows

SEP, CLS, PAD = 2, 1, 0
text_ids = st.lists(st.integers(3, 65535), max_size=40)  # never a special id


@settings(max_examples=200, deadline=None)
@given(q=text_ids, d=text_ids, L=st.integers(3, 60), truncate=st.booleans())
def test_build_row_invariants(q, d, L, truncate):
    row, length, truncated = build_row(q, d, L, SEP, CLS, PAD, truncate)
    needed = len(q) + len(d) + 2
    if needed > L and not truncate:
        assert row is None and length == needed and not truncated
        return
    assert len(row) == L
    assert truncated == (needed > L)
    assert length == min(needed, L)
    # Exactly one SEP and one CLS; CLS at length-1; only PAD after it.
    assert row.count(SEP) == 1 and row.count(CLS) == 1
    s = row.index(SEP)
    assert row[length - 1] == CLS and all(t == PAD for t in row[length:])
    # What precedes SEP is a prefix of the question, what follows it a prefix of the document,
    # and truncation keeps the question whole whenever it leaves room for SEP and CLS.
    assert row[:s] == q[:s] and s == min(len(q), L - 2)
    kept_doc = row[s + 1 : length - 1]
    assert kept_doc == d[: len(kept_doc)]
    assert len(kept_doc) == min(len(d), L - 2 - s)


def test_build_row_rejects_too_small_max_length():
    with pytest.raises(ValueError, match="max_length"):
        build_row([5], [6], 2, SEP, CLS, PAD, True)


def _oracle_row(q, d, L, truncate):
    """The row spelled out directly from the issue's wording (independent of build_row)."""
    if len(q) + len(d) + 2 <= L:
        real = q + [SEP] + d + [CLS]
    elif not truncate:
        return None
    elif len(q) <= L - 2:
        real = q + [SEP] + d[: L - 2 - len(q)] + [CLS]
    else:
        real = q[: L - 2] + [SEP, CLS]
    return real + [PAD] * (L - len(real))


record = st.tuples(
    st.lists(st.integers(0, 9), max_size=12),  # small ids: specials do occur inside the text
    st.lists(st.integers(0, 9), max_size=20),
    st.lists(st.lists(st.integers(0, 9), max_size=20), min_size=1, max_size=4),
)


@settings(max_examples=100, deadline=None)
@given(records=st.lists(record, min_size=1, max_size=8), L=st.integers(3, 30), truncate=st.booleans(),
       cut=st.integers(0, 3), first_group=st.integers(0, 10**6))
def test_pack_rows_matches_oracle_and_counts(records, L, truncate, cut, first_group):
    # Build the arrays with a leading record that is then sliced away: batches read back from
    # parquet arrive as slices with non-zero offsets.
    pad_rec = ([7] * 3, [8] * 5, [[9] * 2])
    allr = [pad_rec] * cut + records
    q = pa.array([r[0] for r in allr], pa.list_(pa.uint16())).slice(cut)
    p = pa.array([r[1] for r in allr], pa.list_(pa.uint16())).slice(cut)
    n = pa.array([r[2] for r in allr], pa.list_(pa.list_(pa.uint16()))).slice(cut)
    res = pack_rows(q, p, n, L, SEP, CLS, PAD, truncate, first_group=first_group)

    expected, kept_groups, truncated, dropped, special, needed = [], 0, 0, 0, 0, []
    for g, (qq, pos, negs) in enumerate(records):
        docs = [pos, *negs]
        rows = [_oracle_row(qq, d, L, truncate) for d in docs]
        needed += [len(qq) + len(d) + 2 for d in docs]
        if any(r is None for r in rows):
            dropped += len(rows)
            continue
        kept_groups += 1
        for j, (d, r) in enumerate(zip(docs, rows)):
            length = min(len(qq) + len(d) + 2, L)
            truncated += len(qq) + len(d) + 2 > L
            s = min(len(qq), L - 2)
            special += any(t in (SEP, CLS, PAD) for t in qq[:s] + d[: length - 2 - s])
            expected.append({"input_ids": r, "labels": int(j == 0), "length": length, "group": first_group + g})
    assert res.batch.to_pylist() == expected
    assert (res.kept_groups, res.truncated_rows, res.dropped_rows, res.special_id_rows) == (
        kept_groups, truncated, dropped, special)
    assert res.needed_lengths.tolist() == needed and res.groups == len(records)
