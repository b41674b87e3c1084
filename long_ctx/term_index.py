"""Per-record term statistics for BM25, computed with numpy over the UTF-8 bytes.

BM25 over one record needs only: each document's token count, the document frequency of every
distinct term (rank_bm25's negative-idf floor uses the mean idf over *all* corpus terms, summed in
order of first occurrence) and the per-document counts of the query terms. Building Python
string tokens and dicts for ~20k tokens per record is what makes the straightforward version
slow, so the common case never creates a Python object per token:

* Bytes are classified in numpy. A maximal run of "candidate" bytes (ASCII word bytes or any
  non-ASCII byte for `words`; anything but ASCII whitespace for `whitespace`) that is pure ASCII
  is exactly one token: its boundaries are ASCII bytes that can never be part of a token.
* Runs that contain non-ASCII bytes (accented names, curly quotes, ...) are decoded and
  tokenized by the exact Python tokenizer; they are few, so this costs little and keeps the
  tokens identical to the documented definition whatever the Unicode subtleties.
* Each token becomes a 64-bit key: a polynomial hash of its (ASCII-case-folded) bytes plus its
  length. Tokens are grouped by sorting keys; a group whose members disagree on the full key or
  the byte length reveals a collision of the grouping bits, and the record is then recomputed by
  the exact pure-Python path. (An undetected collision needs two distinct same-length tokens
  with equal 64-bit keys in one record: about 1e-12 per record for natural text.)
"""
from __future__ import annotations

from collections import Counter
from typing import Callable, Sequence

import numpy as np

# Any odd multiplier is invertible mod 2**64; a large "random" one mixes bytes well.
_BASE = 0x9E3779B97F4A7C15
_LEN_MIX = np.uint64(0xC2B2AE3D27D4EB4F)
# Records longer than this (bytes) use the exact path instead of growing the power tables
# (2 x 8 bytes per input byte) without bound.
MAX_FAST_BYTES = 16 << 20

_pow = np.ones(1, np.uint64)
_pow_inv = np.ones(1, np.uint64)


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """BASE**j and BASE**-j mod 2**64 for j < n (cached, grown by doubling)."""
    global _pow, _pow_inv
    if len(_pow) < n:
        size = max(n, 2 * len(_pow), 1 << 16)
        for base, name in ((_BASE, "_pow"), (pow(_BASE, -1, 1 << 64), "_pow_inv")):
            table = np.full(size, base, np.uint64)
            table[0] = 1
            globals()[name] = np.cumprod(table, dtype=np.uint64)  # wraps mod 2**64
    return _pow[:n], _pow_inv[:n]


def _word_candidates(a: np.ndarray) -> np.ndarray:
    # [A-Za-z0-9_] or a non-ASCII byte; uint8 arithmetic wraps, so `x - lo < width` is a range test.
    c = (a | 0x20) - np.uint8(97) < 26
    c |= a - np.uint8(48) < 10
    c |= a == 95
    c |= a >= 128
    return c


def _nonspace_candidates(a: np.ndarray) -> np.ndarray:
    # str.split() whitespace in ASCII: \t \n \v \f \r (9..13), \x1c..\x1f (28..31) and space.
    space = a - np.uint8(9) < 5
    space |= a - np.uint8(28) < 5  # 28..32: \x1c..\x1f and the space itself
    return ~space


class TermIndex:
    """Term statistics of one corpus (a record's documents).

    doc_len:  [N] int64, tokens per document.
    df_first: [V] int64, document frequency of every distinct term, terms in order of first
              occurrence (documents in order, tokens in order).
    """

    doc_len: np.ndarray
    df_first: np.ndarray

    def term_frequencies(self, terms: Sequence[str]) -> list[np.ndarray | None]:
        """For each term: [N] int64 count per document, or None if the corpus lacks it."""
        raise NotImplementedError


class ExactTermIndex(TermIndex):
    """Pure-Python reference path (dicts of strings); used when the fast path cannot vouch."""

    def __init__(self, documents: Sequence[str], tokenize: Callable[[str], list[str]]) -> None:
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


def _keys(
    folded: np.ndarray, starts: np.ndarray, ends: np.ndarray
) -> np.ndarray:
    """64-bit key of each byte span folded[starts[i]:ends[i]] (uint64, position-independent)."""
    n = len(folded)
    pw, pw_inv = _powers(n + 1)
    prefix = np.empty(n + 1, np.uint64)  # prefix[i] = sum_{j<i} folded[j] * BASE**j
    prefix[0] = 0
    np.cumsum(folded * pw[:n], out=prefix[1:])
    keys = (prefix[ends] - prefix[starts]) * pw_inv[starts]
    keys += (ends - starts).astype(np.uint64) * _LEN_MIX
    # The first byte enters with weight BASE**0 = 1, i.e. only into the low bits; grouping uses
    # the high bits, so finish with a bijective mixer (splitmix64's) that spreads every bit.
    keys ^= keys >> np.uint64(30)
    keys *= np.uint64(0xBF58476D1CE4E5B9)
    keys ^= keys >> np.uint64(27)
    keys *= np.uint64(0x94D049BB133111EB)
    keys ^= keys >> np.uint64(31)
    return keys


def _fold(a: np.ndarray, fold_case: bool) -> np.ndarray:
    # ASCII x | 0x20 lowercases letters and keeps digits; it maps '_' to DEL, which no token
    # contains, so it stays injective on token bytes. Non-ASCII bytes are left alone (Python has
    # already lowercased those tokens).
    if not fold_case:
        return a
    return np.where(a < 128, a | np.uint8(0x20), a)


def _string_keys(tokens: Sequence[str], fold_case: bool) -> tuple[np.ndarray, np.ndarray]:
    """Keys and UTF-8 byte lengths of already-tokenized strings, consistent with the fast path."""
    encoded = [t.encode("utf-8", "surrogatepass") for t in tokens]
    lens = np.fromiter(map(len, encoded), np.int64, len(encoded))
    a = _fold(np.frombuffer(b"".join(encoded), np.uint8), fold_case)
    ends = np.cumsum(lens)
    return _keys(a, ends - lens, ends), lens


class FastTermIndex(TermIndex):
    def __init__(
        self,
        documents: Sequence[str],
        tokenize: Callable[[str], list[str]],
        fold_case: bool,
    ) -> None:
        self._fold_case = fold_case
        n_docs = len(documents)
        encoded = [d.encode("utf-8", "surrogatepass") for d in documents]
        data = b"\n".join(encoded)  # "\n" is never part of a token in either tokenizer
        is_ascii = data.isascii()
        if len(data) > MAX_FAST_BYTES:
            raise _UseExactPath  # too big for the power tables, not a collision
        a = np.frombuffer(data, np.uint8)
        cand = _word_candidates(a) if fold_case else _nonspace_candidates(a)

        # Runs of candidate bytes: edges where the class flips.
        edges = np.flatnonzero(cand[1:] != cand[:-1]) + 1
        if len(a) and cand[0]:
            edges = np.concatenate(([0], edges))
        if len(a) and cand[-1]:
            edges = np.concatenate((edges, [len(a)]))
        starts, ends = edges[0::2], edges[1::2]

        # Byte offset where each document starts inside `data`.
        lens = np.fromiter(map(len, encoded), np.int64, n_docs)
        doc_starts = np.cumsum(lens + 1) - (lens + 1)
        run_doc = np.searchsorted(doc_starts, starts, side="right") - 1

        keys = _keys(_fold(a, fold_case), starts, ends)
        tok_len = ends - starts
        tok_doc = run_doc
        if not is_ascii:
            # Runs holding non-ASCII bytes are re-tokenized exactly by Python.
            high = np.flatnonzero(a >= 128)
            mixed = np.unique(np.searchsorted(starts, high, side="right") - 1)
            fb_tokens: list[str] = []
            fb_run: list[int] = []
            for r in mixed.tolist():
                toks = tokenize(data[starts[r]:ends[r]].decode("utf-8", "surrogatepass"))
                fb_tokens.extend(toks)
                fb_run.extend([r] * len(toks))
            keep = np.ones(len(starts), bool)
            keep[mixed] = False
            fb_run_arr = np.array(fb_run, dtype=np.int64)
            fb_keys, fb_lens = _string_keys(fb_tokens, fold_case)
            # Insert each run's tokens where the run was, so token order = text order.
            at = np.searchsorted(np.flatnonzero(keep), fb_run_arr)
            keys = np.insert(keys[keep], at, fb_keys)
            tok_len = np.insert(tok_len[keep], at, fb_lens)
            tok_doc = np.insert(run_doc[keep], at, run_doc[fb_run_arr])

        self.doc_len = np.bincount(tok_doc, minlength=n_docs).astype(np.int64)
        n_tok = len(keys)
        if n_tok == 0:
            self.df_first = np.zeros(0, np.int64)
            self._group_top = np.zeros(0, np.uint64)
            return

        # Sort keys with the token index packed into the low bits: a plain (fast, unstable)
        # value sort then also orders each group by token position.
        bits = max(1, (n_tok - 1).bit_length())
        low_mask = np.uint64((1 << bits) - 1)
        packed = np.sort((keys & ~low_mask) | np.arange(n_tok, dtype=np.uint64))
        perm = (packed & low_mask).astype(np.intp)
        top = packed & ~low_mask
        new = np.empty(n_tok, bool)
        new[0] = True
        np.not_equal(top[1:], top[:-1], out=new[1:])
        gid = np.cumsum(new) - 1
        gstart = np.flatnonzero(new)
        first = perm[gstart]  # token index of each term's first occurrence
        if not (
            np.array_equal(keys[perm], keys[first][gid])
            and np.array_equal(tok_len[perm], tok_len[first][gid])
        ):
            raise _UseExactPath

        doc_sorted = tok_doc[perm]
        new_pair = new.copy()
        new_pair[1:] |= doc_sorted[1:] != doc_sorted[:-1]
        df = np.bincount(gid[new_pair], minlength=len(gstart))
        at_first = np.zeros(n_tok, bool)
        at_first[first] = True
        df_by_pos = np.zeros(n_tok, np.int64)
        df_by_pos[first] = df
        self.df_first = df_by_pos[at_first]

        self._group_top = top[gstart]
        self._group_bounds = np.append(gstart, n_tok)
        self._group_first_key = keys[first]
        self._doc_sorted = doc_sorted
        self._low_mask = low_mask
        self._n_docs = n_docs

    def term_frequencies(self, terms: Sequence[str]) -> list[np.ndarray | None]:
        if not terms:
            return []
        if len(self._group_top) == 0:
            return [None] * len(terms)
        keys, _ = _string_keys(terms, self._fold_case)
        tops = keys & ~self._low_mask
        slots = np.searchsorted(self._group_top, tops)
        out: list[np.ndarray | None] = []
        for key, top, g in zip(keys.tolist(), tops.tolist(), slots.tolist()):
            if g >= len(self._group_top) or int(self._group_top[g]) != top:
                out.append(None)
                continue
            if int(self._group_first_key[g]) != key:
                out.append(None)  # same grouping bits, different term
                continue
            docs = self._doc_sorted[self._group_bounds[g]:self._group_bounds[g + 1]]
            out.append(np.bincount(docs, minlength=self._n_docs).astype(np.int64))
        return out


def build_term_index(
    documents: Sequence[str], tokenize: Callable[[str], list[str]], fold_case: bool
) -> TermIndex:
    """Term statistics of `documents` under `tokenize`.

    `tokenize` must be the exact tokenizer; `fold_case` says which fast byte classes match it:
    True for `words` (ASCII [A-Za-z0-9_] tokens, lowercased), False for `whitespace`.
    """
    try:
        return FastTermIndex(documents, tokenize, fold_case)
    except _UseExactPath:
        return ExactTermIndex(documents, tokenize)
