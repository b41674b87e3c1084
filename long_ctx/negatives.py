"""Pick negative documents for a record from its BM25 scores."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from long_ctx.nq_format import SkipRecord

STRATEGIES = ("least", "hardest", "random")


def negative_candidates(
    documents: Sequence[str], gold_index: int, answer: str, filter_answer_docs: bool = True
) -> np.ndarray:
    """0-based indices (ascending) of documents that may serve as negatives.

    The gold document never does; with `filter_answer_docs`, neither does any document that
    contains the answer (case-insensitive via str.lower(), when the answer is non-empty), since
    it likely answers the question too and would teach the model a false negative.
    """
    needle = answer.lower() if filter_answer_docs else ""
    return np.array(
        [
            i
            for i, doc in enumerate(documents)
            if i != gold_index and not (needle and needle in doc.lower())
        ],
        dtype=np.int64,
    )


def select_negatives(
    scores: np.ndarray,
    candidates: np.ndarray,
    strategy: str = "least",
    num_negatives: int = 1,
    seed: int = 0,
    line_number: int = 0,
) -> list[int]:
    """Up to `num_negatives` 0-based indices from `candidates`, best first for `strategy`.

    least: lowest BM25 score; hardest: highest; random: a uniform draw seeded by
    (seed, line_number), so it does not depend on worker count or record order. Score ties go
    to the lower document number. Raises SkipRecord("no_negative_candidate") if none is left.
    """
    if len(candidates) == 0:
        raise SkipRecord("no_negative_candidate")
    if strategy == "random":
        rng = np.random.default_rng([seed, line_number])
        order = rng.permutation(len(candidates))
    elif strategy in ("least", "hardest"):
        cand_scores = scores[candidates]
        # Stable sort over ascending candidate indices keeps ties at the lower document number.
        order = np.argsort(cand_scores if strategy == "least" else -cand_scores, kind="stable")
    else:
        raise ValueError(f"unknown negative strategy {strategy!r}; choose one of {STRATEGIES}")
    return candidates[order[:num_negatives]].tolist()
