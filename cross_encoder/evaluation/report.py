"""Human-readable views of evaluation results: the printed table and the PNG bar chart."""
from __future__ import annotations

import contextlib
import math
import os
import warnings
from typing import IO, Any, Sequence

from cross_encoder.evaluation.ranking_metrics import METRIC_NAMES, THIRDS
from long_ctx.common.atomic import atomic_file
from long_ctx.common.progress import progress_bar

LABELS = {"cross_encoder": "cross-encoder", "bm25": "BM25", "length": "length"}
BAR_METRICS = ("mrr@10", "ndcg@10", "recall@1", "recall@5", "recall@10")
COLORS = {"cross_encoder": "#1f77b4", "bm25": "#ff7f0e", "length": "#9e9e9e"}



def open_run(stack: contextlib.ExitStack, config: Any, input_size: int | None, desc: str,
             quiet: type[Warning]) -> tuple[IO[bytes] | None, Any]:
    """What every evaluation run holds open on `stack`: the --per_question file (it appears only
    if the whole run succeeds) and the progress bar over input bytes; `quiet` warnings are counted
    and reported once at the end instead of per question."""
    fh = stack.enter_context(atomic_file(config.per_question, "wb")) if config.per_question else None
    bar = stack.enter_context(progress_bar(total=input_size, unit="B", unit_scale=True, desc=desc,
                                           disable=not config.progress))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore", quiet)
    return fh, bar

def _fmt(x: Any, width: int = 13) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return f"{'-':>{width}}"
    return f"{x:>{width}.4f}" if isinstance(x, float) else f"{x:>{width}}"


def format_table(res: dict[str, Any], breakdowns: bool = True) -> str:
    """The metrics table (overall, then by gold position third and by pool size) as printable text."""
    ce, bm = res["cross_encoder"], res["bm25"]
    ln = res.get("length")  # the length baseline (longest document first)
    head = f"{'':24s}{LABELS['cross_encoder']:>13s}{LABELS['bm25']:>13s}{'CE - BM25':>13s}" + \
        (f"{LABELS['length']:>13s}" if ln else "")
    lines = [f"evaluation on {res['num_questions']:,} questions "
             f"({res['documents_scored']:,} documents, pools of {res['pool_size']['min']}-{res['pool_size']['max']})",
             head, "-" * len(head)]
    for m in METRIC_NAMES:
        lines.append(f"{m:24s}{_fmt(ce[m])}{_fmt(bm[m])}{_fmt(ce[m] - bm[m])}" + (_fmt(ln[m]) if ln else ""))
    parts = (("MRR@10 by gold position", "by_gold_position", THIRDS),
             ("MRR@10 by pool size", "by_pool_size", list(ce["by_pool_size"])))
    for title, key, order in parts if breakdowns else ():
        lines += ["", f"{title:24s}{LABELS['cross_encoder']:>13s}{LABELS['bm25']:>13s}{'questions':>13s}"]
        for label in order:
            c, b = ce[key][label], bm[key][label]
            lines.append(f"{label:24s}{_fmt(c['mrr@10'])}{_fmt(b['mrr@10'])}{_fmt(c['n'])}")
    if res.get("skipped"):
        lines += ["", "skipped lines: " + ", ".join(f"{k} {v:,}" for k, v in res["skipped"].items())]
    t = res.get("timing", {})
    if t:
        lines.append(f"cross-encoder {t['cross_encoder_s']:.1f} s ({t['cross_encoder_docs_per_s']:,.0f} docs/s), "
                     f"BM25 {t['bm25_s']:.1f} s, total {t['elapsed_s']:.1f} s")
    if res.get("output_json"):
        lines.append(f"results: {res['output_json']}  plot: {res['output_plot']}")
    return "\n".join(lines)


def plot_results(res: dict[str, Any], path: str | os.PathLike) -> None:
    """Grouped bars, cross-encoder vs BM25: overall metrics, MRR@10 by gold third and by pool size."""
    ce = res["cross_encoder"]
    panels = [
        ("overall", list(BAR_METRICS), lambda s, k: res[s][k], list(BAR_METRICS)),
        ("MRR@10 by gold position (third of the pool)", list(THIRDS),
         lambda s, k: res[s]["by_gold_position"][k]["mrr@10"],
         [f"{k}\nn={ce['by_gold_position'][k]['n']}" for k in THIRDS]),
        ("MRR@10 by pool size (documents)", list(ce["by_pool_size"]), lambda s, k: res[s]["by_pool_size"][k]["mrr@10"],
         [f"{k}\nn={v['n']}" for k, v in ce["by_pool_size"].items()]),
    ]
    systems = [s for s in LABELS if s in res]
    plot_panels(panels, path, f"Cross-encoder vs BM25 on {res['num_questions']:,} questions", [5, 3, 4], (14, 4.5),
                systems)


def plot_panels(panels: list[tuple], path: str | os.PathLike, title: str, width_ratios: list[int],
                figsize: tuple[float, float], systems: Sequence[str] = ("cross_encoder", "bm25")) -> None:
    """One PNG of bar panels, the `systems` side by side; a panel is (title, keys,
    get(system, key) -> value in 0..1, tick labels)."""
    # The object API with the Agg canvas: headless, and no pyplot import.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), gridspec_kw={"width_ratios": width_ratios})
    width = 0.76 / len(systems)
    for ax, (panel_title, keys, get, ticks) in zip(axes, panels):
        for j, system in enumerate(systems):
            vals = [get(system, k) for k in keys]
            vals = [0.0 if v is None or math.isnan(v) else v for v in vals]
            xs = [i + (j - (len(systems) - 1) / 2) * width for i in range(len(keys))]
            bars = ax.bar(xs, vals, width, label=LABELS[system], color=COLORS[system])
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.set_xticks(range(len(keys)), ticks, fontsize=8)
        ax.set_ylim(0, 1.08)
        ax.set_title(panel_title, fontsize=10)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png")
