"""BM25 exactly as `rank_bm25.BM25Okapi(doc_tokens).get_scores(query_tokens)`, but fast.

Tokenizers (the definitions every stage and the evaluator share):

* `words` (default): the matches of Python `re` pattern `\\w+` on the original text (Unicode word
  characters: `str.isalnum()` or `_`), each match then lowercased with `str.lower()` — i.e.
  `[m.lower() for m in re.findall(r"\\w+", text)]`. Matching comes first, so `İstanbul` is one
  token `i̇stanbul` and `ΟΔΟΣ` becomes `οδος` (final sigma); lowercasing the text first would
  split or change those few characters differently.
* `whitespace`: `text.split()` (Unicode whitespace, case kept).

Scoring reproduces rank_bm25's quirks, float64 step for step: idf = log(N - df + 0.5) -
log(df + 0.5); terms with negative idf get epsilon x the mean idf over all corpus terms (summed
in first-occurrence order, like its dict); a query term absent from the corpus adds nothing; a
repeated query term counts each time. One deliberate difference: a corpus without a single
token (where rank_bm25 raises ZeroDivisionError) scores all zeros.
"""
from __future__ import annotations

import itertools
import math
import re
from functools import lru_cache
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from long_ctx.stage0.bm25.codepoints import JoinedDocs
from long_ctx.stage0.bm25.term_index import TermIndex, build_term_index

K1 = 1.5
B = 0.75
EPSILON = 0.25

_WORD = re.compile(r"\w+")


def tokenize_words(text: str) -> list[str]:
    """`\\w+` matches of the original text, each lowercased (see module docstring)."""
    return [m.lower() for m in _WORD.findall(text)]


def tokenize_whitespace(text: str) -> list[str]:
    """`str.split()`: runs of non-whitespace, case kept."""
    return text.split()


TOKENIZERS: dict[str, Callable[[str], list[str]]] = {
    "words": tokenize_words,
    "whitespace": tokenize_whitespace,
}

# Texts longer than this are tokenized piece by piece: a 25 MB passage would otherwise hold a
# list of ~4M token strings at once (~10x its size).
STREAM_CHARS = 1 << 20


def _pieces(text: str) -> Iterator[str]:
    """`text` cut at spaces into pieces of about STREAM_CHARS characters. A space is in no token
    of either tokenizer, so every token lies whole in one piece, in order."""
    start = 0
    while len(text) - start > STREAM_CHARS:
        cut = text.rfind(" ", start + 1, start + STREAM_CHARS)
        if cut < 0:
            cut = text.find(" ", start + STREAM_CHARS)
            if cut < 0:
                break
        yield text[start:cut]
        start = cut + 1
    yield text[start:]


def iter_words(text: str) -> Iterable[str]:
    """`tokenize_words(text)`, a piece at a time for huge texts (see STREAM_CHARS)."""
    if len(text) <= STREAM_CHARS:
        return tokenize_words(text)
    return itertools.chain.from_iterable(map(tokenize_words, _pieces(text)))


def iter_whitespace(text: str) -> Iterable[str]:
    """`tokenize_whitespace(text)`, a piece at a time for huge texts."""
    if len(text) <= STREAM_CHARS:
        return text.split()
    return itertools.chain.from_iterable(map(str.split, _pieces(text)))


# The exact path counts a document's tokens as they come (see STREAM_CHARS).
TOKEN_STREAMS: dict[str, Callable[[str], Iterable[str]]] = {"words": iter_words, "whitespace": iter_whitespace}


def get_tokenizer(name: str) -> Callable[[str], list[str]]:
    try:
        return TOKENIZERS[name]
    except KeyError:
        raise ValueError(f"unknown BM25 tokenizer {name!r}; choose one of {sorted(TOKENIZERS)}") from None


def index_documents(
    documents: Sequence[str], tokenizer: str = "words", joined: JoinedDocs | None = None
) -> TermIndex:
    """Term statistics of a corpus, reusable for several queries (`joined`: optional
    precomputed JoinedDocs of `documents`)."""
    get_tokenizer(tokenizer)  # the error for an unknown name
    return build_term_index(documents, TOKEN_STREAMS[tokenizer], tokenizer == "words", joined)


@lru_cache(maxsize=1024)
def _idf_table(n_docs: int) -> np.ndarray:
    # [n_docs + 1] float64: raw idf by document frequency, computed with math.log exactly as
    # rank_bm25 does (numpy's vectorised log may differ in the last bit).
    table = np.zeros(n_docs + 1)
    for df in range(1, n_docs + 1):
        table[df] = math.log(n_docs - df + 0.5) - math.log(df + 0.5)
    table.flags.writeable = False
    return table


def scores_from_index(index: TermIndex, query_tokens: Sequence[str]) -> np.ndarray:
    """[N] float64 BM25Okapi scores of every document of `index` for `query_tokens`."""
    doc_len = index.doc_len
    n_docs = len(doc_len)
    score = np.zeros(n_docs)
    n_terms = len(index.df_first)
    if n_docs == 0 or n_terms == 0:
        return score
    unique_terms = list(dict.fromkeys(query_tokens))
    found, tf, df = index.term_counts(unique_terms)  # absent terms: idf 0, they add nothing
    idf_table = _idf_table(n_docs)
    idf = idf_table[df]  # [F] float64, the same values as rank_bm25's per-term math.log
    negative = idf < 0
    if negative.any():
        # np.cumsum adds strictly left to right, like rank_bm25's `idf_sum += idf` loop, so the
        # floor below is bit-identical to its value.
        idf_sum = float(np.cumsum(idf_table[index.df_first])[-1])
        idf[negative] = EPSILON * (idf_sum / n_terms)
    # rank_bm25 multiplies by an idf of 0; skipping such a term leaves every score unchanged.
    keep = np.flatnonzero(idf != 0)
    if not len(keep):
        return score
    rows = dict(zip((unique_terms[i] for i in found[keep].tolist()), range(len(keep))))
    order = [rows[t] for t in query_tokens if t in rows]  # repeated query terms count every time
    avgdl = int(doc_len.sum()) / n_docs
    # Same operation order as rank_bm25: k1 * (1 - b + b * doc_len / avgdl).
    length_norm = K1 * (1 - B + B * doc_len / avgdl)
    tf = tf[keep]  # [T, N] int64
    # [T, N]: the same elementwise float64 operations as rank_bm25's per-term expression.
    contrib = idf[keep, None] * (tf * (K1 + 1) / (tf + length_norm))
    # Added term by term in query order from zeros, as rank_bm25 does: cumsum along axis 0 is
    # a plain running sum (no pairwise reordering), so the result has the same bits.
    terms = contrib[order]
    terms[0] += 0.0  # rank_bm25 starts from zeros: 0.0 + -0.0 is 0.0
    return np.cumsum(terms, axis=0)[-1]


def bm25_scores(documents: Sequence[str], query: str, tokenizer: str = "words") -> np.ndarray:
    """[len(documents)] float64, equal to rank_bm25.BM25Okapi(tokens).get_scores(query tokens)."""
    tokenize = get_tokenizer(tokenizer)
    return scores_from_index(index_documents(documents, tokenizer), tokenize(query))


def rank_documents(scores: np.ndarray | Sequence[float]) -> list[int]:
    """0-based document indices by descending score; ties go to the lower index."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.argsort(-scores, kind="stable").tolist()
