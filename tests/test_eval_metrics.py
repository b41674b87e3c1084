"""Ranking metrics against hand-computed cases and a brute-force definition."""
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cross_encoder.evaluation.ranking_metrics import (bucket_order, gold_rank, ndcg, pool_size_bucket, position_third,
                                                      recall, reciprocal_rank, summarize)


def test_gold_rank_by_hand():
    assert gold_rank([0.1, 0.9, 0.5], 1) == 1
    assert gold_rank([0.1, 0.9, 0.5], 2) == 2
    assert gold_rank([0.1, 0.9, 0.5], 0) == 3
    # Ties go to the lower document index: doc 0 outranks doc 2 at the same score, doc 3 does not.
    assert gold_rank([1.0, 0.0, 1.0, 1.0], 2) == 2
    assert gold_rank([1.0, 0.0, 1.0, 1.0], 0) == 1
    assert gold_rank([1.0, 0.0, 1.0, 1.0], 3) == 3
    assert gold_rank([5.0], 0) == 1
    with pytest.raises(IndexError):
        gold_rank([1.0, 2.0], 2)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-3, 3), min_size=1, max_size=30), st.data())
def test_gold_rank_equals_counting_definition(scores, data):
    g = data.draw(st.integers(0, len(scores) - 1))
    # Independent definition: 1 + strictly better documents + equal documents with a lower index.
    expected = 1 + sum(s > scores[g] for s in scores) + sum(s == scores[g] for s in scores[:g])
    assert gold_rank([float(s) for s in scores], g) == expected


def test_per_question_metrics_by_hand():
    assert reciprocal_rank(1) == 1.0
    assert reciprocal_rank(4) == 0.25
    assert reciprocal_rank(10) == 0.1
    assert reciprocal_rank(11) == 0.0
    assert ndcg(1) == 1.0
    assert ndcg(3) == pytest.approx(0.5)  # 1 / log2(4)
    assert ndcg(7) == pytest.approx(1 / 3)  # 1 / log2(8)
    assert ndcg(10) == pytest.approx(1 / math.log2(11))
    assert ndcg(11) == 0.0
    assert recall(1, 1) == 1.0 and recall(2, 1) == 0.0
    assert recall(5, 5) == 1.0 and recall(6, 5) == 0.0
    with pytest.raises(ValueError):
        reciprocal_rank(0)


def test_summarize_by_hand():
    s = summarize([1, 2, 4, 12])
    assert s["n"] == 4
    assert s["mrr@10"] == pytest.approx((1 + 0.5 + 0.25 + 0) / 4)
    assert s["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(5) + 0) / 4)
    assert s["recall@1"] == 0.25
    assert s["recall@5"] == 0.75
    assert s["recall@10"] == 0.75
    assert s["mean_gold_rank"] == pytest.approx(19 / 4)


def test_summarize_empty_is_nan_not_zero():
    s = summarize([])
    assert s["n"] == 0
    assert all(math.isnan(s[k]) for k in ("mrr@10", "ndcg@10", "recall@1", "mean_gold_rank"))


def test_position_thirds():
    assert [position_third(i, 10) for i in range(10)] == ["first"] * 4 + ["middle"] * 3 + ["last"] * 3
    assert [position_third(i, 3) for i in range(3)] == ["first", "middle", "last"]
    assert position_third(0, 1) == "first"
    thirds = [position_third(i, 200) for i in range(200)]
    assert (thirds.count("first"), thirds.count("middle"), thirds.count("last")) == (67, 67, 66)  # i < 200/3, i < 400/3, the rest
    with pytest.raises(IndexError):
        position_third(10, 10)


def test_pool_size_buckets():
    assert pool_size_bucket(10) == "10-19"
    assert pool_size_bucket(19) == "10-19"
    assert pool_size_bucket(20) == "20-49"
    assert pool_size_bucket(200) == "100-200"
    assert pool_size_bucket(201) == "201+"
    assert pool_size_bucket(3) == "1-9"
    assert bucket_order(["100-200", "1-9", "20-49", "201+", "10-19", "20-49"]) == \
        ["1-9", "10-19", "20-49", "100-200", "201+"]
