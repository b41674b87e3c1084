"""Text as numpy arrays of code points, with per-character facts cached from Python itself.

The fast BM25 and answer-filter paths classify and lowercase characters in numpy; to stay
identical to the Python definitions they ask Python (`re`'s `\\w`, `str.isspace`, `str.lower`)
once per distinct non-ASCII code point and cache the answer, so no Unicode table of our own
(or its version) is ever involved.
"""
from __future__ import annotations

import re

import numpy as np

_WORD_CHAR = re.compile(r"\w")
#: `lowercase` value for a character whose str.lower() is not one context-free character:
#: `İ` (-> "i̇", two characters) and `Σ` (-> "ς" at the end of a word, else "σ").
SPECIAL = -1
_SIGMA = 0x3A3

# Lazily filled tables for the Basic Multilingual Plane; astral code points use the dict.
_BMP = 1 << 16
_known = np.zeros(_BMP, bool)
_is_word = np.zeros(_BMP, bool)
_is_space = np.zeros(_BMP, bool)
_lower = np.zeros(_BMP, np.int64)
_astral: dict[int, tuple[bool, bool, int]] = {}


def _facts(cp: int) -> tuple[bool, bool, int]:
    ch = chr(cp)
    low = ch.lower()
    return (
        _WORD_CHAR.match(ch) is not None,
        ch.isspace(),
        ord(low) if len(low) == 1 and cp != _SIGMA else SPECIAL,
    )


def char_facts(cps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For code points `cps` (any int array): (is `\\w` char, is whitespace, lowercase or SPECIAL)."""
    cps = cps.astype(np.int64)
    bmp = cps < _BMP
    if bmp.all():
        missing = cps[~_known[cps]]
        if len(missing):
            for c in np.unique(missing).tolist():
                _is_word[c], _is_space[c], _lower[c] = _facts(c)
                _known[c] = True
        return _is_word[cps], _is_space[cps], _lower[cps]
    facts = []
    for c in cps.tolist():
        f = _astral.get(c) if c >= _BMP else None
        if f is None:
            f = _facts(c)
            if c >= _BMP:
                _astral[c] = f
        facts.append(f)
    arr = np.array(facts, dtype=np.int64).reshape(-1, 3)
    return arr[:, 0].astype(bool), arr[:, 1].astype(bool), arr[:, 2]


def codepoints(text: str) -> np.ndarray:
    """Code points of `text` as an unsigned array (uint8, uint16 or uint32), one per character."""
    try:
        return np.frombuffer(text.encode("latin-1"), np.uint8)
    except UnicodeEncodeError:
        pass
    units = np.frombuffer(text.encode("utf-16-le", "surrogatepass"), np.uint16)
    if len(units) == len(text):  # no character outside the BMP
        return units
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)


def lowercase_at(cp: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """str.lower() of the characters cp[idx] as int64 code points (SPECIAL where it needs context)."""
    c = cp[idx]
    low = c.astype(np.int64)
    low += ((c - 65) < 26) * 32
    high = np.flatnonzero(c >= 128)
    if len(high):
        low[high] = char_facts(c[high])[2]
    return low


class JoinedDocs:
    """A record's documents joined with "\\n" (never part of a token or of a one-line answer),
    as text and code points, with each document's start offset: computed once per record and
    shared by the BM25 index and the answer filter."""

    def __init__(self, documents: "list[str] | tuple[str, ...]") -> None:
        self.text = "\n".join(documents)
        self.cp = codepoints(self.text)
        self._ascii_lower: bytes | None = None
        lens = np.fromiter(map(len, documents), np.int64, len(documents)) + 1
        self.doc_starts = np.cumsum(lens) - lens  # [N] offset of each document in `text`

    def doc_of(self, positions: np.ndarray) -> np.ndarray:
        """Index of the document holding each character position."""
        return np.searchsorted(self.doc_starts, positions, side="right") - 1

    def ascii_lowercase_bytes(self) -> bytes:
        """One byte per character: ASCII lowercased, every other character a byte >= 0x80 (so
        it never equals an ASCII byte)."""
        if self._ascii_lower is None:
            cp = self.cp
            if cp.dtype != np.uint8:
                cp = np.minimum(cp, 0x80).astype(np.uint8)
            self._ascii_lower = cp.tobytes().lower()  # bytes.lower() touches ASCII only
        return self._ascii_lower
