"""Text as numpy arrays of code points, with per-character facts cached from Python itself.

The fast BM25 and answer-filter paths classify and lowercase characters in numpy; to stay
identical to the Python definitions they ask Python (`re`'s `\\w`, `str.isspace`, `str.lower`)
once per process for every code point of the Basic Multilingual Plane (and once per distinct
astral code point) and keep the answers, so no Unicode table of our own (or its version) is
ever involved.
"""
from __future__ import annotations

import re

import numpy as np

_WORD_CHAR = re.compile(r"\w")
_NON_WORD_CHAR = re.compile(r"\W")
#: `lowercase` value for a character whose str.lower() is not one context-free character:
#: `İ` (-> "i̇", two characters) and `Σ` (-> "ς" at the end of a word, else "σ").
SPECIAL = -1
_SIGMA = 0x3A3

_BMP = 1 << 16
#: `token_values` of a word character whose lowercase needs its token (`İ`, `Σ`): U+FFFF is no
#: word character and no word character's lowercase, so no other token character gets it.
MARK = 0xFFFF


class _Tables:
    """Per-character facts of the whole Basic Multilingual Plane, asked from Python once per
    process (~30 ms, at first use); astral code points are asked one by one and cached."""

    def __init__(self) -> None:
        chars = "".join(map(chr, range(_BMP)))
        # One regex pass instead of 65,536 matches: every character becomes \x00 or \x01.
        flags = _WORD_CHAR.sub("\x01", _NON_WORD_CHAR.sub("\x00", chars))
        self.is_word = np.frombuffer(flags.encode("latin-1"), np.uint8).astype(bool)  # [65536]
        self.is_space = np.fromiter(map(str.isspace, chars), bool, _BMP)  # [65536]
        lows = [c.lower() for c in chars]
        lower = np.fromiter((ord(c) if len(c) == 1 else SPECIAL for c in lows), np.int64, _BMP)
        lower[_SIGMA] = SPECIAL
        self.lower = lower  # [65536] int64, SPECIAL where str.lower() needs context
        # token_values' tables ([65536] uint16): 0 = not part of a token.
        words = np.where(self.is_word, lower, 0)
        words[self.is_word & ((lower == SPECIAL) | (lower >= MARK))] = MARK
        self.word_values = words.astype(np.uint16)
        space = np.where(self.is_space, 0, np.arange(_BMP))
        space[0] = 0x20  # NUL is a token character of str.split(); the space is never one
        self.space_values = space.astype(np.uint16)
        self.astral: dict[int, tuple[bool, bool, int]] = {}

    def astral_facts(self, cps: list[int]) -> np.ndarray:
        """[len(cps), 3] int64 (is word, is space, lowercase or SPECIAL) of code points >= 2**16."""
        out = []
        for c in cps:
            f = self.astral.get(c)
            if f is None:
                f = self.astral[c] = _facts(c)
            out.append(f)
        return np.array(out, dtype=np.int64).reshape(-1, 3)


_tables: _Tables | None = None


def tables() -> _Tables:
    global _tables
    if _tables is None:
        _tables = _Tables()
    return _tables


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
    t = tables()
    cps = cps.astype(np.int64)
    if not len(cps) or cps.max() < _BMP:
        return t.is_word[cps], t.is_space[cps], t.lower[cps]
    facts = np.empty((len(cps), 3), np.int64)
    bmp = cps < _BMP
    c = cps[bmp]
    facts[bmp] = np.stack([t.is_word[c], t.is_space[c], t.lower[c]], axis=1)
    facts[~bmp] = t.astral_facts(cps[~bmp].tolist())
    return facts[:, 0].astype(bool), facts[:, 1].astype(bool), facts[:, 2]


def token_values(cp: np.ndarray, words: bool) -> np.ndarray:
    """Per character, what a token is made of, and 0 for a character in no token:

    * words (`\\w+` matches, lowercased): the lowercase code point of a word character, MARK for
      one whose lowercase needs context (its token must be lowercased by str.lower()).
    * whitespace (str.split()): the code point of a non-space character (NUL as 0x20, which no
      such token holds).

    uint16 for text inside the BMP, else uint32.
    """
    t = tables()
    table = t.word_values if words else t.space_values
    if cp.dtype != np.uint32:
        return table[cp]
    astral = np.flatnonzero(cp >= _BMP)
    values = table[np.minimum(cp, _BMP - 1)].astype(np.uint32)
    if len(astral):
        c = cp[astral]
        is_word, is_space, low = t.astral_facts(c.tolist()).T
        if words:
            values[astral] = np.where(is_word != 0, np.where(low == SPECIAL, MARK, low), 0)
        else:
            values[astral] = np.where(is_space != 0, 0, c)
    return values


def codepoints(text: str) -> np.ndarray:
    """Code points of `text` as an unsigned array (uint8, uint16 or uint32), one per character."""
    if text.isascii():  # O(1): CPython keeps the flag
        return np.frombuffer(text.encode("ascii"), np.uint8)
    try:
        return np.frombuffer(text.encode("latin-1"), np.uint8)
    except UnicodeEncodeError:
        pass
    # (UTF-32 encodes about 4x faster than UTF-16 here; narrowing it is cheap.)
    units = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)
    return units.astype(np.uint16) if units.max() < _BMP else units


def lowercase_at(cp: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """str.lower() of the characters cp[idx] as int64 code points (SPECIAL where it needs context)."""
    c = cp[idx]
    t = tables()
    if c.dtype != np.uint32 or not len(c) or c.max() < _BMP:
        return t.lower[c]
    low = t.lower[np.minimum(c, _BMP - 1)]
    astral = np.flatnonzero(c >= _BMP)
    low[astral] = t.astral_facts(c[astral].tolist())[:, 2]
    return low


class JoinedDocs:
    """A record's documents joined with "\\n" (never part of a token or of a one-line answer),
    as text and code points, with each document's start offset: computed once per record and
    shared by the BM25 index and the answer filter."""

    def __init__(self, documents: "list[str] | tuple[str, ...]") -> None:
        self.text = "\n".join(documents)
        self.cp = codepoints(self.text)
        self._ascii_lower: bytes | None = None
        self._high: np.ndarray | None = None
        lens = np.fromiter(map(len, documents), np.int64, len(documents)) + 1
        self.doc_starts = np.cumsum(lens) - lens  # [N] offset of each document in `text`

    @property
    def high(self) -> np.ndarray:
        """Positions of the non-ASCII characters (ascending)."""
        if self._high is None:
            self._high = np.zeros(0, np.intp) if self.text.isascii() else np.flatnonzero(self.cp >= 128)
        return self._high

    def doc_of(self, positions: np.ndarray) -> np.ndarray:
        """Index of the document holding each character position."""
        return np.searchsorted(self.doc_starts, positions, side="right") - 1

    def ascii_lowercase_bytes(self) -> bytes:
        """One byte per character: ASCII lowercased, every other character a byte >= 0x80 (so
        it never equals an ASCII byte)."""
        if self._ascii_lower is None:
            cp = self.cp
            if cp.dtype != np.uint8:
                cp = cp.astype(np.uint8)  # the low byte; the non-ASCII characters get 0x80 next
                cp[self.high] = 0x80
            self._ascii_lower = cp.tobytes().lower()  # bytes.lower() touches ASCII only
        return self._ascii_lower
