"""Per-record term statistics for BM25, computed with numpy over the text's code points.

BM25 over one record needs only: each document's token count, the document frequency of every
distinct term (rank_bm25's negative-idf floor uses the mean idf over *all* corpus terms, summed in
order of first occurrence) and the per-document counts of the query terms. Building a Python
string and dict entry for each of the ~10-20k tokens of a record is what makes the
straightforward version slow, so the fast path never creates a Python object per token:

* The record's documents are joined with "\\n" (never part of a token) and turned into an array
  of code points (a plain `encode`, 1, 2 or 4 bytes per character).
* Each character is classified and lowercased exactly as the Python tokenizer would, by one
  lookup in a table that asked Python itself (`\\w` via the same `re` pattern, `str.isspace`,
  `str.lower`) about every code point of the BMP (`codepoints.token_values`; astral code points
  are asked one by one). A token is a maximal run of word (resp. non-space) characters, exactly
  like `re.findall(r"\\w+")` (resp. `str.split()`).
* For `words`, tokens are lowercased per character. The few characters whose lowercase is not a
  single character or depends on context (`İ` -> `i̇`, final `Σ`) make their token be lowercased
  by `str.lower()` itself.
* Each token becomes a 64-bit key: a polynomial hash of its (lowercased) code points plus a
  multiple of its length. Tokens are grouped by sorting keys with the token index packed into
  the low bits; a group whose members disagree on the full key reveals a collision of the
  grouping bits, and the record is then recomputed by the exact pure-Python path. An undetected
  collision needs two distinct tokens with equal 64-bit keys in one record (about 1e-12 per
  record for natural text).
"""
from __future__ import annotations

from collections import Counter
from typing import Callable, Iterable, Sequence

import numpy as np

from long_ctx.stage0.bm25.codepoints import MARK, JoinedDocs, token_values

_BASE = 0x9E3779B97F4A7C15  # odd, hence invertible mod 2**64
_LEN_MIX = np.uint64(0xC2B2AE3D27D4EB4F)
# Records longer than this (characters) use the exact path instead of growing the power tables
# (16 bytes per character) without bound.
MAX_FAST_CHARS = 4 << 20

_pow = np.ones(1, np.uint64)
_pow_inv = np.full(1, _BASE, np.uint64)


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """BASE**j and BASE**(1-j) mod 2**64 for j < n (cached, grown by doubling)."""
    global _pow, _pow_inv
    if len(_pow) < n:
        size = max(n, 2 * len(_pow), 1 << 16)
        tables = []
        for base, first in ((_BASE, 1), (pow(_BASE, -1, 1 << 64), _BASE)):
            table = np.full(size, base, np.uint64)
            table[0] = first
            tables.append(np.cumprod(table, dtype=np.uint64))  # wraps mod 2**64
        _pow, _pow_inv = tables
    return _pow[:n], _pow_inv[:n]


class TermIndex:
    """Term statistics of one corpus (a record's documents).

    doc_len:  [N] int64, tokens per document.
    df_first: [V] int64, document frequency of every distinct term, terms in order of first
              occurrence (documents in order, tokens in order).
    """

    doc_len: np.ndarray
    df_first: np.ndarray

    def term_frequencies(self, terms: Sequence[str]) -> list[np.ndarray | None]:
        """For each term (a token as the tokenizer returns it): [N] int64 count per document, or
        None if the corpus lacks it."""
        found, tf, _df = self.term_counts(terms)
        out: list[np.ndarray | None] = [None] * len(terms)
        for i, row in zip(found.tolist(), tf):
            out[i] = row
        return out

    def term_counts(self, terms: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The distinct `terms` at once: (found [F] int64, indices into `terms` of those in the
        corpus, ascending; tf [F, N] int64, their counts per document; df [F] int64, their
        document frequencies)."""
        rows = self.term_frequencies(terms)
        found = np.array([i for i, r in enumerate(rows) if r is not None], dtype=np.int64)
        tf = np.array([rows[i] for i in found.tolist()], dtype=np.int64).reshape(len(found), len(self.doc_len))
        return found, tf, np.count_nonzero(tf, axis=1)


class ExactTermIndex(TermIndex):
    """Pure-Python path (dicts of strings); used when the fast path cannot vouch for a record."""

    def __init__(self, documents: Sequence[str], tokenize: Callable[[str], Iterable[str]]) -> None:
        vocab: dict[str, int] = {}
        df: list[int] = []
        self._counts: list[Counter] = []
        for doc in documents:
            counts = Counter(tokenize(doc))
            self._counts.append(counts)
            for term in counts:  # Counter keeps first-occurrence order
                slot = vocab.get(term)
                if slot is None:
                    vocab[term] = len(df)
                    df.append(1)
                else:
                    df[slot] += 1
        self._vocab = vocab
        self.doc_len = np.array([sum(c.values()) for c in self._counts], dtype=np.int64)
        self.df_first = np.array(df, dtype=np.int64)

    def term_frequencies(self, terms: Sequence[str]) -> list[np.ndarray | None]:
        return [
            np.array([c.get(t, 0) for c in self._counts], dtype=np.int64) if t in self._vocab else None
            for t in terms
        ]


class _UseExactPath(Exception):
    """The fast path cannot vouch for this record (key collision or oversized record)."""


def _keys(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """[len(starts)] uint64 key of each span values[starts[i]:ends[i]], position-independent."""
    n = len(values)
    pw, pw_inv = _powers(n + 1)
    # prefix[i] = sum_{j<i} values[j] * BASE**j mod 2**64, summed as int64: same bits as uint64
    # (two's complement wraps alike) but numpy's int64 cumsum is about twice as fast.
    prefix = np.empty(n + 1, np.int64)
    prefix[0] = 0
    np.multiply(values, pw[:n].view(np.int64), out=prefix[1:])
    np.cumsum(prefix[1:], out=prefix[1:])
    prefix = prefix.view(np.uint64)
    # Shift every span to start at BASE**1, not BASE**0: a first character multiplied by 1
    # would only reach the low bits, while tokens are grouped by the high bits.
    keys = (prefix[ends] - prefix[starts]) * pw_inv[starts]
    keys += (ends - starts).astype(np.uint64) * _LEN_MIX
    return keys


_MASK64 = (1 << 64) - 1
_LEN_MIX_INT = int(_LEN_MIX)


def _string_keys(tokens: Sequence[str], words: bool) -> np.ndarray:
    """Keys of tokens as the tokenizer returns them (already lowercased for words): the same
    values `_keys` gives their characters, in plain Python (faster for the handful of query
    terms than numpy's per-call overhead)."""
    out = []
    for token in tokens:
        h, p = 0, _BASE  # a span starts at BASE**1, see _keys
        for ch in token:
            c = ord(ch)
            if words and c < 128:
                c |= 0x20  # same ASCII fold as the fast path's `values`
            h = (h + c * p) & _MASK64
            p = (p * _BASE) & _MASK64
        out.append((h + len(token) * _LEN_MIX_INT) & _MASK64)
    return np.array(out, dtype=np.uint64)


class FastTermIndex(TermIndex):
    def __init__(self, joined: JoinedDocs, words: bool) -> None:
        self._words = words
        text, cp = joined.text, joined.cp
        n_docs = len(joined.doc_starts)
        if len(text) > MAX_FAST_CHARS:
            raise _UseExactPath

        # Classify characters; `cand` = part of a token.
        if words:
            # ASCII x | 0x20 lowercases letters and keeps digits; it maps '_' to DEL, which no
            # word token contains, so it stays injective on word characters.
            values = cp | 0x20
            cand = values - 97 < 26  # unsigned wrap-around turns these into range tests
            cand |= cp - 48 < 10
            cand |= cp == 95
        else:
            space = cp - 9 < 5  # \t \n \v \f \r
            space |= cp - 28 < 5  # \x1c..\x1f and ' '
            cand = ~space
            values = cp
        special_pos = None
        high = joined.high
        if len(high):
            # Non-ASCII characters: one table lookup each (what Python says about them).
            high_values = token_values(cp[high], words)
            cand[high] = high_values != 0
            if words:
                special_pos = high[high_values == MARK]  # their tokens get keys below
                if high_values.max() > np.iinfo(values.dtype).max:
                    values = values.astype(high_values.dtype)
                values[high] = high_values

        # Tokens = maximal runs of candidate characters (padded with a non-token at both ends).
        padded = np.zeros(len(cand) + 2, bool)
        padded[1:-1] = cand
        edges = np.flatnonzero(padded[1:] != padded[:-1])
        starts, ends = edges[0::2], edges[1::2]
        n_tok = len(starts)

        # Documents are consecutive spans of the text, so tokens per document come from where
        # each document starts among the (sorted) token starts.
        first_token = np.append(np.searchsorted(starts, joined.doc_starts), n_tok)
        self.doc_len = np.diff(first_token)
        self._n_docs = n_docs
        if n_tok == 0:
            self.df_first = np.zeros(0, np.int64)
            self._group_top = np.zeros(0, np.uint64)
            return
        tok_doc = np.repeat(np.arange(n_docs, dtype=np.int32), self.doc_len)

        keys = _keys(values, starts, ends)
        if special_pos is not None and len(special_pos):
            # Tokens holding a character whose lowercase needs context: str.lower() does them.
            tok = np.unique(np.searchsorted(starts, special_pos, side="right") - 1)
            lowered = [text[s:e].lower() for s, e in zip(starts[tok].tolist(), ends[tok].tolist())]
            keys[tok] = _string_keys(lowered, words)

        # Sort keys with the token index packed into the low bits: a plain (fast, unstable)
        # value sort then groups equal terms and orders each group by token position.
        bits = max(1, (n_tok - 1).bit_length())
        low_mask = np.uint64((1 << bits) - 1)
        top_mask = ~low_mask
        packed = keys & top_mask
        packed |= np.arange(n_tok, dtype=np.uint64)
        packed.sort()
        perm = (packed & low_mask).view(np.intp)
        top = packed
        top &= top_mask
        new = np.empty(n_tok, bool)  # first token of a group
        new[0] = True
        np.not_equal(top[1:], top[:-1], out=new[1:])
        gstart = np.flatnonzero(new)
        # Inside a group every full key (which includes the length) must agree, else two terms
        # share the grouping bits. Full keys differ at least where groups start, so they agree
        # inside groups exactly when they differ nowhere else.
        keys_sorted = keys[perm]
        if np.count_nonzero(keys_sorted[1:] != keys_sorted[:-1]) != len(gstart) - 1:
            raise _UseExactPath
        first = perm[gstart]  # token index of each term's first occurrence

        doc_sorted = tok_doc[perm]
        new_pair = new.copy()  # first token of a (term, document) pair
        new_pair[1:] |= doc_sorted[1:] != doc_sorted[:-1]
        # Document frequency = pairs per group: group starts are pair starts, so count the
        # pair starts between consecutive group starts.
        pair_starts = np.flatnonzero(new_pair)
        group_at = np.flatnonzero(new[pair_starts])  # [V] index of each group's first pair
        df = np.empty(len(gstart), np.int64)
        np.subtract(group_at[1:], group_at[:-1], out=df[:-1])
        df[-1] = len(pair_starts) - group_at[-1]
        # Reorder by first occurrence without a second sort: scatter to token positions.
        df_by_pos = np.empty(n_tok, np.int64)
        df_by_pos[first] = df
        is_first = np.zeros(n_tok, bool)
        is_first[first] = True
        self.df_first = df_by_pos[np.flatnonzero(is_first)]

        self._group_df = df
        self._group_top = top[gstart]
        self._group_bounds = np.append(gstart, n_tok)
        self._group_first_key = keys_sorted[gstart]
        self._doc_sorted = doc_sorted
        self._low_mask = low_mask

    def term_counts(self, terms: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = self._n_docs
        if not len(terms) or len(self._group_top) == 0:
            return np.zeros(0, np.int64), np.zeros((0, n), np.int64), np.zeros(0, np.int64)
        keys = _string_keys(terms, self._words)
        tops = keys & ~self._low_mask
        g = np.minimum(np.searchsorted(self._group_top, tops), len(self._group_top) - 1)
        # Same grouping bits and same full key (else a different term shares the bits).
        found = np.flatnonzero((self._group_top[g] == tops) & (self._group_first_key[g] == keys))
        g = g[found]
        lo = self._group_bounds[g]
        counts = self._group_bounds[g + 1] - lo
        # Positions of every token of the found terms in the group-sorted order.
        pos = np.repeat(lo - (np.cumsum(counts) - counts), counts) + np.arange(counts.sum())
        row = np.repeat(np.arange(len(found)), counts)
        tf = np.bincount(row * n + self._doc_sorted[pos], minlength=len(found) * n).reshape(len(found), n)
        return found, tf, self._group_df[g]


def build_term_index(
    documents: Sequence[str],
    tokenize: Callable[[str], Iterable[str]],
    words: bool,
    joined: JoinedDocs | None = None,
) -> TermIndex:
    """Term statistics of `documents`.

    `words` selects the fast path's character classes: True for the `words` tokenizer (`\\w+`
    matches, lowercased), False for `whitespace` (`str.split()`). `tokenize` must be that exact
    tokenizer; it is used when the fast path cannot vouch for a record. `joined` may pass the
    record's precomputed JoinedDocs.
    """
    try:
        return FastTermIndex(joined or JoinedDocs(documents), words)
    except _UseExactPath:
        return ExactTermIndex(documents, tokenize)
