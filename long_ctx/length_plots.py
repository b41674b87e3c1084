"""Token-length histogram PNGs, so users see the length distribution before spending GPU hours."""
from __future__ import annotations

import os

import numpy as np

from long_ctx.atomic import atomic_file
from long_ctx.length_stats import LengthCounter


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
