"""Independent oracles for the stage-0 tests (no code from long_ctx.stage0.bm25 / nq_format)."""
from __future__ import annotations

import re

import numpy as np
import rank_bm25

_WORD = re.compile(r"\w+")


def ref_words(text: str) -> list[str]:
    """The documented `words` definition: `\\w+` matches of the original text, then lowercased."""
    return [m.lower() for m in _WORD.findall(text)]


def ref_whitespace(text: str) -> list[str]:
    return text.split()


REF_TOKENIZERS = {"words": ref_words, "whitespace": ref_whitespace}


def ref_scores(documents: list[str], query: str, tokenizer: str = "words") -> np.ndarray:
    tok = REF_TOKENIZERS[tokenizer]
    return rank_bm25.BM25Okapi([tok(d) for d in documents]).get_scores(tok(query))


def ref_negatives(
    scores, documents, gold_index: int, answer: str, strategy: str, k: int, filter_docs: bool = True
) -> list[int]:
    """Brute force: sort candidates by (score, index) or (-score, index). Never the gold, nor a
    document equal to it once whitespace runs are one space (the documented rule)."""
    needle = answer.lower()
    gold_words = documents[gold_index].split()
    cands = [
        i for i, d in enumerate(documents)
        if i != gold_index and d.split() != gold_words and not (filter_docs and needle and needle in d.lower())
    ]
    sign = 1 if strategy == "least" else -1
    return sorted(cands, key=lambda i: (sign * scores[i], i))[:k]


def ref_render(question, answer, long_answer, documents, gold_id, instruction="Read these.") -> str:
    """Render a row text the way the NQ file writes it (written independently of nq_format)."""
    parts = [instruction, ""]
    parts += [f"Document [{i + 1}] {d}" for i, d in enumerate(documents)]
    parts += ["", f"Question: {question}", f"Answer: {answer}", f"Long Answer: {long_answer}",
              f"Gold Document ID: {gold_id}"]
    return "\n".join(parts)
