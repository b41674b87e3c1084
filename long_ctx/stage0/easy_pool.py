"""The easy negatives of `--negative_mix`: documents of other records, from a bounded reservoir.

"Other records" means earlier records in input order: every written record offers up to
OFFER_PER_RECORD of its negative candidates (chosen by its worker, seeded by seed and line
number; empty ones and ones over MAX_CHARS characters never), and the main process keeps a
uniform sample of POOL_DOCS of all offers so far (reservoir sampling, Algorithm R, with one
generator seeded by --seed). A record draws its easy negatives from the pool *before* offering its
own documents, so the first record has none (its easy share falls to the next kind, counted), and
the pool is full after POOL_DOCS / OFFER_PER_RECORD written records. Memory is bounded by
2 x POOL_DOCS x MAX_CHARS characters on any input (each entry keeps its text and its lowercase
for the answer check; ~160 MB of ASCII at most); since only the main process touches the pool, in
input order, the choices do not depend on the number of workers.

An easy negative never contains the record's answer (`answer.lower() in text.lower()`, as the
answer filter, whatever --filter_answer_docs says: an easy negative is off-topic by definition),
is never one of the record's own documents (conservatively: a candidate as long, in characters, as
one of them is never taken, so a few other ones are left out too, never the reverse; hashing or
even slicing every document of every record cost more than the rest of the mix), never repeats a
text already chosen for the record, and with --match_length lies in the positive's word band. A draw examines at most
MAX_SCAN entries of the pool, from a seeded random place; what it does not find there is a
shortfall.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POOL_DOCS = 4096
#: Pool entries a record's draw examines at most (the main process's time per record stays small
#: when few entries fit the record's length band).
MAX_SCAN = 256
OFFER_PER_RECORD = 2
MAX_CHARS = 20_000
_STREAM = 0xEA5


def offers(documents: list[str], candidates: np.ndarray, seed: int, line_number: int,
           words: list[int] | None = None) -> list[tuple[str, int]]:
    """The (text, words) a record offers to the pool (in the worker): up to OFFER_PER_RECORD of its
    candidates, seeded by (seed, line number)."""
    rng = np.random.default_rng([seed, line_number, _STREAM])
    out = []
    for i in rng.permutation(len(candidates)).tolist():
        text = documents[int(candidates[i])]
        if text and len(text) <= MAX_CHARS:
            out.append((text, len(text.split())))
            if len(out) == OFFER_PER_RECORD:
                break
    return out


@dataclass
class _Doc:
    text: str
    lowered: str
    words: int


class EasyPool:
    """Main-process reservoir of other records' documents (module docstring)."""

    def __init__(self, seed: int, size: int = POOL_DOCS) -> None:
        self.size = size
        self.docs: list[_Doc] = []
        self.words = np.zeros(size, np.int64)  # [size] words of each entry (pick's band, vectorized)
        self.offered = 0
        self.rng = np.random.default_rng([seed, _STREAM])

    def _put(self, j: int, text: str, words: int) -> None:
        d = _Doc(text, text.lower(), words)
        if j == len(self.docs):
            self.docs.append(d)
        else:
            self.docs[j] = d
        self.words[j] = words

    def offer(self, items: list[tuple[str, int]]) -> None:
        for text, words in items:
            self.offered += 1
            if len(self.docs) < self.size:
                self._put(len(self.docs), text, words)
                continue
            j = int(self.rng.integers(self.offered))
            if j < self.size:
                self._put(j, text, words)

    def pick(self, pending, n: int, taken: set) -> list[tuple[str, int]]:
        """Up to `n` (text, words) for a record (`mining.Pending`), scanning the pool from a seeded
        random place; `taken` (texts already chosen for the record) is updated."""
        if not self.docs or n <= 0:
            return []
        lo, hi = pending.word_band
        p = pending.positive_words
        sides: tuple[list, list] = ([], [])  # (at least as long as the positive, shorter)
        # From a seeded random place onwards, round the pool (its order is random already:
        # replacements land at random places); cheaper than a permutation of it per record.
        size = len(self.docs)
        first = int(self.rng.integers(size))
        scan = min(size, MAX_SCAN)
        words = self.words[:size]
        w = np.concatenate((words[first:first + scan], words[: max(0, first + scan - size)]))
        ok = np.flatnonzero((w >= lo) & (w <= hi))
        for j in ((ok + first) % size).tolist():
            d = self.docs[j]
            if len(d.text) in pending.own_lengths or d.text in taken:
                continue
            if pending.needle and pending.needle in d.lowered:
                continue
            side = sides[0 if p is None or d.words >= p else 1]
            if len(side) < n:
                side.append(d)
            if len(sides[0]) + len(sides[1]) >= n and (p is None or min(map(len, sides)) == n):
                break
        a, b = sides if pending.first_longer else sides[::-1]
        # With --match_length, alternate the sides as mining.Filtered.balanced does.
        mixed = [x for pair in zip(a, b) for x in pair] + a[len(b):] + b[len(a):]
        out = mixed[:n]
        taken.update(d.text for d in out)
        return [(d.text, d.words) for d in out]
