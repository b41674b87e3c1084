"""Pick negative documents for a record from its BM25 scores."""
from __future__ import annotations

import bisect
import itertools
from typing import Sequence

import numpy as np

from long_ctx.stage0.bm25.codepoints import SPECIAL, JoinedDocs, lowercase_at
from long_ctx.stage0.bm25.scoring import iter_whitespace
from long_ctx.stage0.nq_format import SkipRecord

STRATEGIES = ("least", "hardest", "random")


def same_words(a: str, b: str) -> bool:
    """`a.split() == b.split()`, i.e. equal once every run of whitespace is one space and the
    ends are stripped; compared word by word, without building the lists of a huge passage."""
    if a == b:
        return True
    if a.split(None, 1)[:1] != b.split(None, 1)[:1]:  # cheap: different documents differ at once
        return False
    return all(x == y for x, y in itertools.zip_longest(iter_whitespace(a), iter_whitespace(b)))


def identical_to_positive(
    documents: Sequence[str], gold_index: int, doc_len: np.ndarray | None = None
) -> np.ndarray:
    """[N] bool: the documents other than the gold whose text equals the gold's up to whitespace
    (`same_words`; pools do repeat passages, and such a "negative" is the positive).

    `doc_len` ([N] BM25 token counts, either tokenizer) only speeds this up: texts equal up to
    whitespace have equal token counts, so only those documents are compared.
    """
    n = len(documents)
    same = np.zeros(n, bool)
    if not 0 <= gold_index < n:
        return same
    others = np.arange(n) if doc_len is None else np.flatnonzero(doc_len == doc_len[gold_index])
    gold = documents[gold_index]
    for i in others.tolist():
        same[i] = i != gold_index and same_words(documents[i], gold)
    return same


def negative_candidates(
    documents: Sequence[str],
    gold_index: int,
    answer: str,
    filter_answer_docs: bool = True,
    joined: JoinedDocs | None = None,
    identical: np.ndarray | None = None,
) -> np.ndarray:
    """0-based indices (ascending) of documents that may serve as negatives.

    The gold document never does, nor any document identical to it after whitespace
    normalisation (`identical_to_positive`; `identical` may pass that mask precomputed). With
    `filter_answer_docs`, neither does any document that contains the answer
    case-insensitively (`answer.lower() in document.lower()`, when the answer is non-empty),
    since it likely answers the question too and would teach the model a false negative.
    `joined` may pass the record's precomputed JoinedDocs.
    """
    keep = np.ones(len(documents), bool)
    if 0 <= gold_index < len(documents):
        keep[gold_index] = False
    keep &= ~(identical if identical is not None else identical_to_positive(documents, gold_index))
    needle = answer.lower() if filter_answer_docs else ""
    if needle:
        keep &= ~documents_containing(documents, needle, joined)
    return np.flatnonzero(keep)


def documents_containing(
    documents: Sequence[str], needle: str, joined: JoinedDocs | None = None
) -> np.ndarray:
    """[N] bool: `needle in document.lower()` for each document (`needle` already lowercased)."""
    if "\n" not in needle:
        found = _search_lowered(joined or JoinedDocs(documents), needle)
        if found is not None:
            return found
    return np.array([needle in doc.lower() for doc in documents], dtype=bool)


#: Characters per block of the general answer search (bounds its temporary arrays to ~10 MB).
SEARCH_BLOCK = 1 << 19

#: The only non-ASCII characters whose str.lower() contains ASCII: İ -> "i̇" and the Kelvin
#: sign K -> "k" (tests check this against every code point).
TO_ASCII_LOWER = ("\u0130", "\u212a")
_TO_ASCII_LOWER_CP = [ord(c) for c in TO_ASCII_LOWER]


def _has_any(values: np.ndarray, targets: list[int]) -> bool:
    return any(bool((values == t).any()) for t in targets)


def _search_lowered(joined: JoinedDocs, needle: str) -> np.ndarray | None:
    # Lowercasing every passage with str.lower() is most of this filter's cost on non-ASCII
    # text, so search the joined documents instead (a match cannot span two of them: they are
    # joined with "\n", which the needle lacks). Returns None when some character needs context
    # to lowercase (`İ`, `Σ`); the caller then asks Python.
    if needle.isascii() and not _has_any(joined.cp[joined.high], _TO_ASCII_LOWER_CP):
        # Only ASCII characters can take part in a match (no other character lowercases to
        # ASCII): search the ASCII-lowercased bytes with bytes.find, jumping to the next
        # document after each hit.
        haystack = joined.ascii_lowercase_bytes()
        return _find_units(haystack, needle.encode("ascii"), 1, joined.doc_starts)
    # General case: lowercase every character by table (ASCII by arithmetic, the others as
    # Python does, `lowercase_at`) and search the needle's code points in those, as bytes. Block
    # by block (overlapping by the needle's length, so every match lies whole in one block): the
    # lowercases of a whole huge record at once would cost several bytes per character more.
    cp, high = joined.cp, joined.high
    pattern = [ord(c) for c in needle]
    found = np.zeros(len(joined.doc_starts), bool)
    for a in range(0, len(cp), SEARCH_BLOCK):
        b = min(len(cp), a + SEARCH_BLOCK + len(pattern) - 1)
        lo, hi = np.searchsorted(high, [a, b])
        block_high = high[lo:hi]
        high_lower = lowercase_at(cp, block_high)
        if (high_lower == SPECIAL).any():
            return None
        block = cp[a:b]
        lowered = np.where(block - 65 < 26, block | 0x20, block)  # (unsigned wrap-around: a range test)
        if len(block_high) and high_lower.max() > np.iinfo(lowered.dtype).max:
            lowered = lowered.astype(np.uint32)
        lowered[block_high - a] = high_lower
        if max(pattern) <= np.iinfo(lowered.dtype).max:  # else no character here lowercases to it
            # Big-endian: the needle's last byte is then its last character's low byte, not the
            # 0 that half of the haystack's bytes are (bytes.find skips ahead by its last byte).
            big = lowered.dtype.newbyteorder(">")
            needle_units = np.array(pattern, big).tobytes()
            found |= _find_units(lowered.astype(big).tobytes(), needle_units, lowered.itemsize, joined.doc_starts - a)
    return found


def _find_units(haystack: bytes, needle: bytes, itemsize: int, doc_starts: np.ndarray) -> np.ndarray:
    """Which documents hold `needle` in `haystack` (`itemsize` bytes per character; a match
    must start on a character; `doc_starts` in characters, relative to the haystack), jumping
    to the next document after each hit."""
    starts = doc_starts.tolist()
    found = np.zeros(len(starts), bool)
    at = haystack.find(needle)
    while at >= 0:
        if at % itemsize:  # straddles two characters
            at = haystack.find(needle, at + 1)
            continue
        doc = bisect.bisect_right(starts, at // itemsize) - 1
        found[doc] = True
        if doc + 1 == len(starts):
            break
        at = haystack.find(needle, starts[doc + 1] * itemsize)
    return found


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
