"""Metrics against brute-force oracles (pair loops) and scipy's Mann-Whitney U."""
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import mannwhitneyu

from cross_encoder.training.metrics import accuracy, all_metrics, group_top1_accuracy, pairwise_accuracy, roc_auc

# Small integer-valued scores make ties frequent, which is where AUC bugs hide.
scores_st = st.lists(st.integers(-3, 3), min_size=1, max_size=30)


def brute_auc(s, y):
    pos = [a for a, l in zip(s, y) if l == 1]
    neg = [a for a, l in zip(s, y) if l == 0]
    if not pos or not neg:
        return math.nan
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_auc_matches_pair_count_and_mannwhitney(data):
    s = data.draw(scores_st)
    y = data.draw(st.lists(st.integers(0, 1), min_size=len(s), max_size=len(s)))
    got, want = roc_auc(np.array(s, float), np.array(y)), brute_auc(s, y)
    if math.isnan(want):
        assert math.isnan(got)
        return
    assert got == want
    u = mannwhitneyu([a for a, l in zip(s, y) if l], [a for a, l in zip(s, y) if not l]).statistic
    assert math.isclose(got, u / (sum(y) * (len(y) - sum(y))))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_pairwise_and_top1_match_loops(data):
    s = data.draw(scores_st)
    y = data.draw(st.lists(st.integers(0, 1), min_size=len(s), max_size=len(s)))
    g = data.draw(st.lists(st.integers(0, 3), min_size=len(s), max_size=len(s)))
    wins = pairs = hits = groups = 0
    for k in set(g):
        pos = [a for a, l, gg in zip(s, y, g) if gg == k and l == 1]
        neg = [a for a, l, gg in zip(s, y, g) if gg == k and l == 0]
        if pos and neg:
            wins += sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
            pairs += len(pos) * len(neg)
            hits += all(p > n for p in pos for n in neg)
            groups += 1
    pa, top1 = pairwise_accuracy(np.array(s, float), np.array(y), np.array(g)), \
        group_top1_accuracy(np.array(s, float), np.array(y), np.array(g))
    if pairs == 0:
        assert math.isnan(pa) and math.isnan(top1)
    else:
        assert math.isclose(pa, wins / pairs) and math.isclose(top1, hits / groups)


def test_hand_cases():
    s = np.array([2.0, 1.0, -1.0, 0.5, 3.0, 0.2])
    y = np.array([1, 0, 0, 1, 0, 0])
    g = np.array([0, 0, 0, 1, 1, 1])
    # group 0: 2 > 1, 2 > -1 (2 wins); group 1: 0.5 < 3, 0.5 > 0.2 (1 win)
    assert pairwise_accuracy(s, y, g) == 3 / 4
    assert group_top1_accuracy(s, y, g) == 1 / 2
    # threshold 0: predicted positive = [1,1,0,1,1,1] vs labels [1,0,0,1,0,0] -> 3 of 6 right
    assert accuracy(s, y) == 3 / 6
    # threshold 1.5: predicted [1,0,0,0,1,0] -> right at rows 0, 1, 2, 5
    assert accuracy(s, y, threshold=1.5) == 4 / 6
    m = all_metrics(s, y, g)
    assert set(m) == {"accuracy", "roc_auc", "pairwise_accuracy", "group_top1"}
    assert roc_auc(np.array([0.1, 0.9]), np.array([0, 1])) == 1.0
    assert roc_auc(np.array([0.9, 0.1]), np.array([0, 1])) == 0.0
