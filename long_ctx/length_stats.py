"""Exact length distributions in bounded memory.

Lengths are counted in a bincount (memory grows with the longest length, never with the number of
records), so percentiles are exact on inputs of any size and the same counts draw the histograms.
"""
from __future__ import annotations

import math

import numpy as np


class LengthCounter:
    """Running histogram of non-negative integer lengths with exact summary statistics."""

    def __init__(self) -> None:
        self.counts = np.zeros(0, dtype=np.int64)  # counts[v] = how many lengths equal v

    def add(self, lengths) -> None:
        lengths = np.asarray(lengths, dtype=np.int64).ravel()
        if lengths.size == 0:
            return
        if lengths.min() < 0:
            raise ValueError("lengths must be non-negative")
        binned = np.bincount(lengths)
        if binned.size > self.counts.size:
            binned[: self.counts.size] += self.counts
            self.counts = binned
        else:
            self.counts[: binned.size] += binned

    def merge(self, other: "LengthCounter") -> None:
        if other.counts.size > self.counts.size:
            self.counts = np.concatenate([self.counts, np.zeros(other.counts.size - self.counts.size, np.int64)])
        self.counts[: other.counts.size] += other.counts

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    @property
    def total(self) -> int:
        return int((self.counts * np.arange(self.counts.size)).sum())

    def percentile(self, q: float) -> int:
        """Nearest-rank percentile: the smallest length with at least q% of lengths at or below it."""
        n = self.count
        if n == 0:
            return 0
        rank = max(1, math.ceil(q / 100.0 * n))
        return int(np.searchsorted(np.cumsum(self.counts), rank))

    def summary(self) -> dict:
        n = self.count
        if n == 0:
            return {"count": 0, "total": 0, "mean": 0.0, "min": 0, "p50": 0, "p90": 0, "p99": 0, "max": 0}
        nonzero = np.flatnonzero(self.counts)
        return {
            "count": n,
            "total": self.total,
            "mean": round(self.total / n, 3),
            "min": int(nonzero[0]),
            "p50": self.percentile(50),
            "p90": self.percentile(90),
            "p99": self.percentile(99),
            "max": int(nonzero[-1]),
        }
