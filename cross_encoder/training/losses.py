"""Cross-encoder training losses over a batch of row scores.

Every loss takes `scores` [S] (float32 logits), `labels` [S] (1 positive / 0 negative) and
`groups` [S] and returns a scalar mean, so a batch can be split into pieces only where the mean
is separable (see `trainer`): scores for bce/mse, whole groups for `grouped`/`listwise`. A score
is a passage row's (group: its source record) or one CLS of a pool row (group: the row).

`listwise` is the softmax cross-entropy over a pool row's document scores, target the labelled
one: with one positive per group that is exactly `grouped_loss`, so it is the same function.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

LOSSES = ("bce", "mse", "grouped", "listwise")
#: The losses each row format can train with; the first is the default (`--loss auto`).
LOSSES_FOR = {"passage": ("bce", "mse", "grouped"), "pool": ("listwise", "bce")}

# The score above which a row is called positive for `accuracy`: logits for bce/grouped,
# a regression onto the 0/1 labels for mse.
ACCURACY_THRESHOLD = {"bce": 0.0, "mse": 0.5, "grouped": 0.0, "listwise": 0.0}

# What `grouped` needs from the batcher: every group's rows in one batch (a pool row is a whole
# group by itself).
NEEDS_WHOLE_GROUPS = {"bce": False, "mse": False, "grouped": True, "listwise": False}


def resolve_loss(name: str, row_format: str) -> str:
    """The loss a run trains with: `auto` -> the row format's default; a loss the format cannot
    train with is a ValueError saying which ones it can."""
    allowed = LOSSES_FOR[row_format]
    if name == "auto":
        return allowed[0]
    if name not in allowed:
        why = {("pool", "grouped"): "on pool rows a row is the group: use --loss listwise (the same softmax)",
               ("pool", "mse"): "pool rows are ranked within the row: use --loss listwise or bce",
               ("passage", "listwise"): "listwise reads every CLS of a pool row; on passage rows use --loss "
                                        "grouped (the same softmax over a group's rows)"}.get((row_format, name), "")
        raise ValueError(f"--loss {name} does not train {row_format} rows ({why}); choose one of "
                         f"{', '.join(allowed)} or auto")
    return name


def bce_loss(scores: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy on logits; the default."""
    return F.binary_cross_entropy_with_logits(scores.float(), labels.float())


def mse_loss(scores: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """The original trainer's loss: squared error of the raw score against the 0/1 label."""
    return F.mse_loss(scores.float(), labels.float())


def grouped_loss(scores: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy per group: -log(sum exp(positives) / sum exp(all rows of the group)).

    Averaged over the groups in the batch that hold a positive and at least one negative;
    groups without both carry no ranking signal and are skipped (a zero that keeps the graph
    when none is left).
    """
    scores = scores.float()
    pos = labels == 1
    uniq, inv = torch.unique(groups, return_inverse=True)  # inv: [B] -> group slot
    n = uniq.numel()
    n_pos = torch.zeros(n, dtype=torch.long, device=scores.device).index_add(0, inv, pos.long())
    n_all = torch.zeros(n, dtype=torch.long, device=scores.device).index_add(0, inv, torch.ones_like(inv))
    valid = (n_pos > 0) & (n_pos < n_all)
    if not bool(valid.any()):
        return scores.sum() * 0.0
    lse_all = _group_logsumexp(scores, inv, n)
    # Masking before exp (not after) keeps the gradient of masked rows an exact zero.
    lse_pos = _group_logsumexp(scores.masked_fill(~pos, -torch.inf), inv, n)
    per_group = lse_all[valid] - lse_pos[valid]
    return per_group.mean()


def _group_logsumexp(scores: torch.Tensor, inv: torch.Tensor, n: int) -> torch.Tensor:
    """logsumexp of `scores` [B] per group slot `inv` [B] -> [n]; -inf entries are ignored."""
    gmax = torch.full((n,), -torch.inf, dtype=scores.dtype, device=scores.device)
    gmax = gmax.scatter_reduce(0, inv, scores.detach(), reduce="amax")
    # A group whose entries are all -inf gets shift 0, so exp(-inf - 0) = 0 instead of NaN.
    shift = torch.where(torch.isfinite(gmax), gmax, torch.zeros_like(gmax))
    total = torch.zeros(n, dtype=scores.dtype, device=scores.device).index_add(
        0, inv, torch.exp(scores - shift[inv]))
    return torch.log(total) + shift


LOSS_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "bce": bce_loss,
    "mse": mse_loss,
    "grouped": grouped_loss,
    "listwise": grouped_loss,  # one positive per row-group: softmax CE with the gold as target
}


def get_loss(name: str) -> Callable[..., torch.Tensor]:
    """The loss function by its `--loss` name."""
    try:
        return LOSS_FUNCTIONS[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}") from None
