"""Ranking/classification metrics for cross-encoder evaluation (pure numpy functions).

All functions take flat per-row arrays: `scores` (higher = more relevant), `labels` (1 = the
group's positive, 0 = a negative) and, where groups matter, `groups` (the source record of each
row, so a question's positive is only compared with its own negatives).
"""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def accuracy(scores: np.ndarray, labels: np.ndarray, threshold: float = 0.0) -> float:
    """Fraction of rows where `score > threshold` agrees with the label."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if scores.size == 0:
        return float("nan")
    return float(np.mean((scores > threshold) == (labels == 1)))


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney rank statistic (ties count one half).

    NaN when only one class is present, since the AUC is undefined there.
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels) == 1
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Average ranks make tied positive/negative pairs contribute exactly 1/2.
    ranks = rankdata(scores, method="average")
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _group_slices(groups: np.ndarray) -> list[np.ndarray]:
    """Row indices per group, whether or not the group's rows are consecutive."""
    groups = np.asarray(groups)
    order = np.argsort(groups, kind="stable")
    bounds = np.flatnonzero(np.diff(groups[order])) + 1
    return np.split(order, bounds) if groups.size else []


def _positives_and_negatives(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray):
    """Yield (positive scores, negative scores) of each group that has both."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels) == 1
    for idx in _group_slices(groups):
        pos, neg = scores[idx][labels[idx]], scores[idx][~labels[idx]]
        if pos.size and neg.size:
            yield pos, neg


def pairwise_accuracy(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """Fraction of (positive, negative) pairs within a group where the positive scores higher.

    Ties count one half; pairs are pooled over all groups. NaN when there are no such pairs.
    """
    wins, pairs = 0.0, 0
    for pos, neg in _positives_and_negatives(scores, labels, groups):
        diff = pos[:, None] - neg[None, :]  # [P, N]
        wins += float((diff > 0).sum()) + 0.5 * float((diff == 0).sum())
        pairs += diff.size
    return wins / pairs if pairs else float("nan")


def group_top1_accuracy(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """Fraction of groups (with a positive and a negative) whose positive beats all negatives."""
    hits, n = 0, 0
    for pos, neg in _positives_and_negatives(scores, labels, groups):
        hits += int(pos.min() > neg.max())
        n += 1
    return hits / n if n else float("nan")


def all_metrics(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                threshold: float = 0.0) -> dict[str, float]:
    """Every metric above under the names logged to metrics.jsonl (without the `eval_` prefix)."""
    return {
        "accuracy": accuracy(scores, labels, threshold),
        "roc_auc": roc_auc(scores, labels),
        "pairwise_accuracy": pairwise_accuracy(scores, labels, groups),
        "group_top1": group_top1_accuracy(scores, labels, groups),
    }


def group_mrr(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """Mean over groups (with a positive and a negative) of 1 / rank of the positive, its rank being
    1 + the negatives scoring at least as high (ties count against it, as in `group_top1_accuracy`).
    A group with several positives ranks its lowest-scoring one."""
    rr = [1.0 / (1 + int((neg >= pos.min()).sum())) for pos, neg in _positives_and_negatives(scores, labels, groups)]
    return float(np.mean(rr)) if rr else float("nan")


def pool_metrics(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """The metrics of pool rows (a group is one row, a score one CLS): row top-1, MRR within the
    row, pairwise accuracy and ROC AUC over all CLS scores."""
    return {
        "row_top1": group_top1_accuracy(scores, labels, groups),
        "row_mrr": group_mrr(scores, labels, groups),
        "pairwise_accuracy": pairwise_accuracy(scores, labels, groups),
        "roc_auc": roc_auc(scores, labels),
    }


def metric_names(is_pool: bool) -> list[str]:
    """The names the trainer's held-out evaluation logs (`eval_loss` and these, prefixed `eval_`)."""
    s, y, g = np.array([1.0, 0.0]), np.array([1, 0]), np.array([0, 0])  # any valid input: only the keys are used
    keys = pool_metrics(s, y, g) if is_pool else all_metrics(s, y, g)
    return ["eval_loss", *(f"eval_{k}" for k in keys)]
