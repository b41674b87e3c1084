"""Padded-data loading, the group split, batch plans and collation."""
import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from trainer_helpers import CLS, PAD, toy_groups, write_padded_dataset

from cross_encoder.training.data import (GroupSpans, collate, group_spans, load_padded_dataset, plan_epoch, plan_eval,
                                         shard_for_rank, split_groups)


def test_load_keeps_exactly_the_real_tokens(tmp_path):
    groups = toy_groups(9, n_neg=3, seed=1)
    ds = write_padded_dataset(tmp_path / "ds", groups, max_length=40, n_shards=3)
    rows = load_padded_dataset(ds, progress=False)
    flat = [r for g in groups for r in g]
    assert rows.n_rows == len(flat)
    for i, (toks, label) in enumerate(flat):
        assert rows.row(i).tolist() == toks
        assert rows.labels[i] == label
    assert rows.groups.tolist() == [g for g, rs in enumerate(groups) for _ in rs]
    # Full-width collation reproduces the stored padded rows byte for byte.
    stored = np.concatenate([np.array(pq.read_table(f).column("input_ids").to_pylist())
                             for f in sorted(ds.glob("*.parquet"))])
    batch = collate(rows, np.arange(rows.n_rows), width=40)
    assert np.array_equal(batch["input_ids"].numpy(), stored)


def test_trimmed_collate_is_prefix_of_full(tmp_path):
    rows = load_padded_dataset(write_padded_dataset(tmp_path / "ds", toy_groups(5), 40), progress=False)
    idx = np.array([3, 0, 7])
    full, trim = collate(rows, idx, width=40), collate(rows, idx)
    T = int(rows.lengths[idx].max())
    assert trim["input_ids"].shape == (3, T)
    assert np.array_equal(full["input_ids"][:, :T].numpy(), trim["input_ids"].numpy())
    assert (full["input_ids"][:, T:] == PAD).all()
    assert (trim["input_ids"][np.arange(3), trim["lengths"] - 1] == CLS).all()


def test_errors_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="2_create_padded_data"):
        load_padded_dataset(tmp_path / "missing")
    ds = write_padded_dataset(tmp_path / "ds", toy_groups(3), 40)
    (ds / "padding.json").unlink()
    with pytest.raises(FileNotFoundError, match="padding.json"):
        load_padded_dataset(ds)
    # A CLS id that disagrees with the rows is caught, not silently trained on.
    ds2 = write_padded_dataset(tmp_path / "ds2", toy_groups(3), 40)
    meta = orjson.loads((ds2 / "padding.json").read_bytes())
    meta["cls_token_id"] = 5
    (ds2 / "padding.json").write_bytes(orjson.dumps(meta))
    with pytest.raises(ValueError, match="CLS"):
        load_padded_dataset(ds2, progress=False)


def test_non_consecutive_groups_rejected(tmp_path):
    g = toy_groups(3)
    ds = write_padded_dataset(tmp_path / "ds", g, 40, n_shards=1)
    rows = load_padded_dataset(ds, progress=False)
    rows.groups[:] = np.array([0, 1, 0, 1, 2, 2, 2, 0, 1])
    with pytest.raises(ValueError, match="consecutive"):
        group_spans(rows)


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 200), st.floats(0.01, 0.5), st.integers(0, 10))
def test_split_is_disjoint_and_complete(n, frac, seed):
    tr, ev = split_groups(n, frac, seed)
    assert len(set(tr) & set(ev)) == 0
    assert sorted([*tr, *ev]) == list(range(n))
    assert 1 <= len(ev) <= n - 1


def spans_from_sizes(sizes, lengths):
    ends = np.cumsum(sizes)
    starts = ends - sizes
    return GroupSpans(starts.astype(np.int64), ends.astype(np.int64),
                      np.maximum.reduceat(lengths, starts).astype(np.int64))


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_plan_covers_train_rows_once_and_respects_groups(data):
    sizes = np.array(data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=30)))
    lengths = np.array(data.draw(st.lists(st.integers(3, 100), min_size=int(sizes.sum()),
                                          max_size=int(sizes.sum()))))
    spans = spans_from_sizes(sizes, lengths)
    train = np.array(sorted(data.draw(st.sets(st.integers(0, len(sizes) - 1), min_size=1))), dtype=np.int64)
    bs = data.draw(st.integers(int(sizes.max()), 12))
    whole, by_len = data.draw(st.booleans()), data.draw(st.booleans())
    batches = plan_epoch(spans, lengths, train, bs, seed=3, epoch=data.draw(st.integers(0, 3)),
                         whole_groups=whole, group_by_length=by_len)
    rows = np.concatenate(batches)
    want = np.concatenate([np.arange(spans.starts[g], spans.ends[g]) for g in train])
    assert sorted(rows.tolist()) == want.tolist()
    assert all(1 <= b.size <= bs for b in batches)
    group_of = np.repeat(np.arange(len(sizes)), sizes)
    if whole:  # every group inside one batch
        for b in batches:
            for g in set(group_of[b].tolist()):
                assert (group_of[b] == g).sum() == sizes[g]
    if whole or by_len:  # a group's rows are adjacent in the epoch order
        seq = group_of[rows]
        changes = seq[np.r_[True, seq[1:] != seq[:-1]]]
        assert len(changes) == len(set(changes.tolist()))


def test_plan_is_deterministic_and_epochs_differ():
    sizes = np.full(40, 3)
    lengths = np.arange(120) % 37 + 5
    spans = spans_from_sizes(sizes, lengths)
    train = np.arange(40)
    a = plan_epoch(spans, lengths, train, 4, 7, 0, False, True)
    b = plan_epoch(spans, lengths, train, 4, 7, 0, False, True)
    c = plan_epoch(spans, lengths, train, 4, 7, 1, False, True)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_group_by_length_cuts_padding():
    rng = np.random.default_rng(0)
    sizes = np.full(400, 2)
    lengths = rng.integers(20, 400, 800)
    spans = spans_from_sizes(sizes, lengths)

    def waste(batches):
        return sum(b.size * lengths[b].max() for b in batches) / lengths.sum()

    plain = waste(plan_epoch(spans, lengths, np.arange(400), 8, 0, 0, False, False))
    grouped = waste(plan_epoch(spans, lengths, np.arange(400), 8, 0, 0, False, True))
    assert grouped < plain


def test_grouped_loss_needs_bs_at_least_group_size():
    sizes = np.array([2, 5])
    lengths = np.full(7, 10)
    with pytest.raises(ValueError, match="--bs 5"):
        plan_epoch(spans_from_sizes(sizes, lengths), lengths, np.arange(2), 4, 0, 0, True, False)


def test_ranks_get_equal_disjoint_shares():
    batches = [np.array([i]) for i in range(11)]
    shares = [shard_for_rank(batches, r, 3) for r in range(3)]
    assert [len(s) for s in shares] == [3, 3, 3]
    got = sorted(int(b[0]) for s in shares for b in s)
    assert got == list(range(9))


def test_eval_plan_covers_eval_rows():
    sizes = np.array([2, 3, 1])
    lengths = np.array([5, 9, 3, 7, 4, 8])
    spans = spans_from_sizes(sizes, lengths)
    batches = plan_eval(spans, lengths, np.array([0, 2]), 2)
    assert sorted(np.concatenate(batches).tolist()) == [0, 1, 5]
