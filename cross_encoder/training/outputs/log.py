"""metrics.jsonl (one JSON object per logged step, kept across resumes) and the loss plot."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson

from long_ctx.common.atomic import atomic_file


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl; a torn last line (the process was killed mid-write) is ignored."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_bytes().splitlines():
        try:
            rows.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    return rows


def truncate_metrics(path: str | Path, max_step: int) -> int:
    """Keep rows with step <= max_step (a resumed run redoes the later ones); returns rows dropped."""
    rows = read_metrics(path)
    keep = [r for r in rows if r.get("step", 0) <= max_step]
    if Path(path).exists():
        with atomic_file(path) as fh:
            for r in keep:
                fh.write(orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
    return len(rows) - len(keep)


class MetricsWriter:
    """Appends rows to metrics.jsonl, flushing each so a crash loses at most the last line."""

    def __init__(self, path: str | Path, fresh: bool):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "wb" if fresh else "ab")

    def write(self, row: dict[str, Any]) -> None:
        self._fh.write(orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def plot_loss(metrics_path: str | Path, out_png: str | Path, title: str = "cross-encoder training") -> Path:
    """Train loss (and eval loss when present) against step, learning rate on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if _finite(r.get("loss"))]
    evals = [(r["step"], r["eval_loss"]) for r in rows if _finite(r.get("eval_loss"))]
    lrs = [(r["step"], r["lr"]) for r in rows if _finite(r.get("lr"))]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", color="tab:orange")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if lrs:
        ax2 = ax.twinx()
        ax2.plot(*zip(*lrs), color="tab:gray", alpha=0.5, linewidth=1, label="lr")
        ax2.set_ylabel("learning rate")
    ax.legend(loc="upper right")
    fig.tight_layout()
    with atomic_file(out_png) as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)
    return Path(out_png)
