"""Exact length distributions in bounded memory, and their histogram PNGs.

Lengths are counted in a bincount (memory grows with the longest length, never with the number of
records), so percentiles are exact on inputs of any size and the same counts draw the histograms
users look at before spending GPU hours.
"""
from __future__ import annotations

import math
import os

import numpy as np

from long_ctx.common.atomic import atomic_file


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


def plot_length_histograms(
    series: dict[str, LengthCounter],
    path: str | os.PathLike,
    title: str,
    max_length: int | None = None,
    bins: int = 60,
) -> None:
    """Overlaid histograms of several length series; a dashed line marks `max_length` if given."""
    # The object API with the Agg canvas: headless, and skips importing pyplot (~0.5 s).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    longest = max([c.counts.size - 1 for c in series.values()] + [max_length or 0, 1])
    edges = np.linspace(0, longest + 1, bins + 1)
    fig = Figure(figsize=(9, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for name, counter in series.items():
        if counter.count == 0:
            continue
        values = np.arange(counter.counts.size)
        s = counter.summary()
        ax.hist(
            values, bins=edges, weights=counter.counts, histtype="stepfilled", alpha=0.45,
            label=f"{name} (n={s['count']:,}, p50={s['p50']}, p99={s['p99']}, max={s['max']})",
        )
    if max_length is not None:
        ax.axvline(max_length, color="k", linestyle="--", linewidth=1.2, label=f"max_length = {max_length}")
    ax.set_xlabel("tokens")
    ax.set_ylabel("count")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no rows", transform=ax.transAxes, ha="center")
    fig.tight_layout()
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png")
