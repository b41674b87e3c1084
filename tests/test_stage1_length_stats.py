"""Exact length statistics against numpy on the raw values."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from long_ctx.common.lengths import LengthCounter


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3000), max_size=40), min_size=1, max_size=5))
def test_summary_equals_numpy_on_the_raw_values(parts):
    counter, other = LengthCounter(), LengthCounter()
    for i, part in enumerate(parts):
        (counter if i % 2 == 0 else other).add(part)
    counter.merge(other)
    values = np.array([v for part in parts for v in part])
    s = counter.summary()
    assert s["count"] == len(values) and s["total"] == int(values.sum())
    if len(values) == 0:
        assert s["max"] == 0 and s["p50"] == 0
        return
    assert s["min"] == values.min() and s["max"] == values.max()
    assert abs(s["mean"] - values.mean()) < 1e-3
    for q in (50, 90, 99):
        assert s[f"p{q}"] == int(np.percentile(values, q, method="inverted_cdf"))
