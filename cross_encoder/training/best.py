"""Which evaluation is the best so far, and when to stop early (--metric_for_best_model,
--greater_is_better, --early_stopping_patience, --early_stopping_threshold).

After each evaluation `BestTracker.update` says whether it beat the best so far (the trainer
then rewrites OUT/best/) and counts the evaluations in a row that did not beat it by more than
the threshold (as Hugging Face's `EarlyStoppingCallback`: an evaluation counts as an improvement
when it is better than the best by more than `threshold`; a NaN is never better). Its state is
part of every checkpoint's training state, so a resumed run keeps the best value and the count.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from long_ctx.common.cli import UsageError

#: Metric names whose lower values are better; every other metric is better higher.
LOWER_IS_BETTER_SUFFIXES = ("_loss", "_rank")


def infer_greater_is_better(metric: str) -> bool:
    return not metric.endswith(LOWER_IS_BETTER_SUFFIXES)


def resolve_metric(metric: str | None, greater: bool | None, row_metrics: list[str], pool_metrics: list[str],
                   default_row_metric: str) -> tuple[str | None, bool | None]:
    """(metric, greater_is_better) the run selects on: `metric` checked against the names this run
    logs (`row_metrics`: the held-out split's, `pool_metrics`: --eval_input_file's), or the
    default (`default_row_metric` with a held-out split, else eval_mrr@10 of the raw pools);
    (None, None) when nothing is evaluated."""
    available = [*row_metrics, *pool_metrics]
    if metric is None:
        if not available:
            return None, None
        metric = default_row_metric if row_metrics else pool_metrics[0]
    elif metric not in available:
        logged = ", ".join(available) if available else "none (--eval_fraction 0 and no --eval_input_file)"
        raise UsageError(f"--metric_for_best_model {metric} is not a metric this run logs; it logs: {logged}")
    return metric, infer_greater_is_better(metric) if greater is None else greater


@dataclass
class BestTracker:
    metric: str
    greater_is_better: bool
    patience: int | None = None
    threshold: float = 0.0
    value: float | None = None  # the best so far (None before the first finite one)
    step: int | None = None  # its step
    evals_without_improvement: int = 0

    def update(self, step: int, metrics: dict[str, Any]) -> bool:
        """Record one evaluation; True when it is the best so far (strictly better)."""
        v = metrics.get(self.metric)
        if v is None:
            raise KeyError(f"{self.metric} missing from the evaluation ({', '.join(metrics)})")
        v = float(v)
        better = math.isfinite(v) and (self.value is None or (v > self.value if self.greater_is_better
                                                                else v < self.value))
        gain = math.inf if self.value is None else (v - self.value if self.greater_is_better else self.value - v)
        if better and gain > self.threshold:
            self.evals_without_improvement = 0
        else:
            self.evals_without_improvement += 1
        if better:
            self.value, self.step = v, step
        return better

    @property
    def stop_reason(self) -> str | None:
        """Why training stops now (None: it goes on)."""
        if self.patience is None or self.evals_without_improvement < self.patience:
            return None
        by = f" by more than {self.threshold:g}" if self.threshold else ""
        n = self.evals_without_improvement
        return (f"early stopping: {self.metric} did not improve{by} for {n} evaluation{'s' * (n != 1)} "
                f"(--early_stopping_patience {self.patience}); best "
                + (f"{self.value:.4g} at step {self.step}" if self.value is not None else "none (every value was NaN)"))

    def row(self) -> dict[str, Any]:
        """What an evaluation row of metrics.jsonl records about the selection."""
        return {"best_metric": self.value, "best_step": self.step,
                "evals_without_improvement": self.evals_without_improvement}

    def summary(self) -> dict[str, Any]:
        return {"metric": self.metric, "greater_is_better": self.greater_is_better, "value": self.value,
                "step": self.step}

    def state(self) -> dict[str, Any]:
        return asdict(self)

    def restore(self, state: dict[str, Any] | None) -> None:
        """Continue from a checkpoint's state (the best value and the count; the metric and its
        direction are run-defining flags, compared before; patience and threshold are today's)."""
        if state and state.get("metric") == self.metric:
            self.value, self.step = state.get("value"), state.get("step")
            self.evals_without_improvement = int(state.get("evals_without_improvement", 0))
