"""NQ multi-document rows whose passages look like real Wikipedia text to a tokenizer and to BM25.

`long_ctx.stage0.synthetic_nq` (the bundled sample's generator) writes a 6,000-word invented
vocabulary built from 36 syllables: each record holds few distinct terms and almost no
non-ASCII. Real NQ pools (DPR-style Wikipedia passages of ~100 words, 10-200 per record) are
different in the ways that cost time: a Zipfian vocabulary of ~100k distinct words, so most
terms of a record occur once; person and place names, some with diacritics; years, dates,
numbers with separators, percentages; punctuation (parentheses, quotes, possessives,
hyphens, en dashes between years); non-ASCII titles, a few words in Greek, Cyrillic or CJK;
and a JSON file whose non-ASCII characters are written as `\\uXXXX` escapes (Python's
`json.dumps` default). This module generates that, seeded and deterministic; everything is
invented (no dataset text).

Each record has a topic (a few dozen mid-frequency words and names): the gold passage and,
less densely, part of the pool use it, so the question's words occur in many passages as in a
retrieved pool; the answer (a year, a name or a number) is in the gold passage and in a few
distractors (which the answer filter removes); some pools repeat a passage.

    from realistic_nq import generate_lines    # from bench/ (tests: bench.realistic_nq)
    lines = list(generate_lines(100, seed=1))   # JSON rows (bytes), no trailing newline
"""
from __future__ import annotations

import json
from typing import Iterator

import numpy as np

from long_ctx.stage0.nq_format import NQRecord, render_text

INSTRUCTION = (
    "Write a high-quality answer for the given question using only the provided search "
    "results (some of which might be irrelevant)."
)
VOCABULARY = 100_000

# The most frequent English words, in rough frequency order (Zipf ranks 1..len).
_COMMON = """the of and in to a was is for as on by with that he it from at his an were are
which this be also or had first its has one their but not after been new who they two she
her other time all during there city when into would only three may more later most between
national while under where some school world about film such years team year state than
league over through war season part american then many since both these can series against
known album united called first age group early them up music including song area before
however united number states population people well river used high second several four
made government south university north team born him being until west same around best based
family village won following show town east released record century home members work each
history became county church played five around album back main""".split()
_COMMON = list(dict.fromkeys(_COMMON))
# Syllables: mostly a single consonant, a single vowel and no coda (as English spelling is,
# on average), so that a passage has ~5.5 characters per word like a real one.
_ONSETS = list("bcdfghklmnprstvw") * 4 + ["", "", "", "", "j", "z", "br", "ch", "cl", "cr", "dr",
                                           "fl", "gr", "pl", "pr", "sh", "sk", "sp", "st", "th", "tr"]
_NUCLEI = list("aeiou") * 6 + list("aeio") * 2 + ["ai", "ea", "ee", "ie", "oo", "ou", "y"]
_CODAS = [""] * 40 + list("nrstlmdk") * 3 + ["nd", "ng", "nt", "rs", "st", "ck", "rd", "x"]
_DIACRITICS = list("éèêëáàâäãåíìîïóòôöõøúùûüñçłśźżčřšžğışőű")
_GREEK = [chr(c) for c in range(0x3B1, 0x3CA) if c != 0x3C2]
_CYRILLIC = [chr(c) for c in range(0x430, 0x450)]
_CJK = [chr(c) for c in range(0x4E00, 0x4E00 + 2500)]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"]
_UNITS = ["km", "metres", "miles", "kg", "tonnes", "people", "votes", "copies", "square kilometres"]
_QWORDS = {"year": ["when was", "when did", "what year did", "when is"],
           "person": ["who was", "who played", "who wrote", "who sang", "who is", "who won"],
           "number": ["how many", "how much", "how long is", "how tall is"],
           "place": ["where is", "where was", "where did", "what is the capital of"]}


def _words(rng: np.random.Generator, syllables: np.ndarray) -> list[str]:
    """One invented word per entry of `syllables` (its number of syllables, 1..3)."""
    n, most = len(syllables), 3
    parts = [np.array(t, dtype=object)[rng.integers(len(t), size=(n, most))] for t in (_ONSETS, _NUCLEI, _CODAS)]
    syl = parts[0] + parts[1] + parts[2]  # [n, 3] syllables
    return ["".join(row[:k]) for row, k in zip(syl.tolist(), syllables.tolist())]


def _word(rng: np.random.Generator, syllables: int) -> str:
    return _words(rng, np.array([syllables]))[0]


def _foreign(rng: np.random.Generator) -> str:
    script = rng.random()
    if script < 0.4:
        return "".join(rng.choice(_GREEK, rng.integers(3, 9)))
    if script < 0.8:
        return "".join(rng.choice(_CYRILLIC, rng.integers(3, 10)))
    return "".join(rng.choice(_CJK, rng.integers(2, 4)))


def _accent(rng: np.random.Generator, word: str) -> str:
    i = int(rng.integers(len(word)))
    return word[:i] + _DIACRITICS[rng.integers(len(_DIACRITICS))] + word[i + 1:]


class Vocabulary:
    """~100k distinct words with Zipf(1) frequencies (common English words first, short invented
    words before long ones), ~3 % with a diacritic and ~0.5 % in another script; name pools."""

    def __init__(self, rng: np.random.Generator, size: int = VOCABULARY) -> None:
        words = dict.fromkeys(_COMMON)
        while len(words) < size:
            rank = np.arange(len(words), size)
            # Rarer words are longer: ~4 letters near rank 1,000, ~6 near 20,000, under 7 at the tail.
            syl = 1 + (rng.random(len(rank)) < np.minimum(0.85, 0.25 + rank / 20_000)) \
                + (rng.random(len(rank)) < rank / 250_000)
            r = rng.random(len(rank)).tolist()
            for k, w in zip(rank.tolist(), _words(rng, syl)):
                if len(w) < 2:
                    continue
                if k > 1500 and r[k - rank[0]] < 0.03:
                    w = _accent(rng, w)
                elif k > 3000 and r[k - rank[0]] < 0.035:
                    w = _foreign(rng)
                words.setdefault(w)
                if len(words) == size:
                    break
        self.words = list(words)
        self.cum = np.cumsum(1.0 / np.arange(1, size + 1))
        self.cum /= self.cum[-1]
        self.first = self._names(rng, 3000, 0.10)
        self.last = self._names(rng, 20_000, 0.14)
        self.places = self._names(rng, 8000, 0.12)

    @staticmethod
    @staticmethod
    def _names(rng: np.random.Generator, n: int, accented: float) -> list[str]:
        names = _words(rng, 2 + (rng.random(n) < 0.3))
        accent = (rng.random(n) < accented).tolist()
        return [(_accent(rng, w) if a else w).capitalize() for w, a in zip(names, accent)]

    def pick(self, rng: np.random.Generator, k: int, lo: int = 0) -> np.ndarray:
        """k Zipf-distributed word ranks (>= lo)."""
        u = rng.random(k) * (1 - self.cum[lo - 1] if lo else 1) + (self.cum[lo - 1] if lo else 0)
        return np.minimum(np.searchsorted(self.cum, u), len(self.words) - 1)

    def person(self, rng: np.random.Generator) -> str:
        f = self.first[min(int(rng.zipf(1.3)) - 1, len(self.first) - 1)]
        return f"{f} {self.last[int(rng.integers(len(self.last)))]}"

    def place(self, rng: np.random.Generator) -> str:
        return self.places[min(int(rng.zipf(1.2)) - 1, len(self.places) - 1)]


def _number(rng: np.random.Generator) -> str:
    r = rng.random()
    if r < 0.45:
        return str(int(rng.integers(1900, 2019)) if rng.random() < 0.7 else int(rng.integers(1000, 1900)))
    if r < 0.55:
        a = int(rng.integers(1900, 2015))
        return f"{a}–{a + int(rng.integers(1, 9))}"  # en dash, as Wikipedia writes ranges
    if r < 0.68:
        return f"{int(rng.integers(1, 29))} {_MONTHS[rng.integers(12)]} {int(rng.integers(1900, 2019))}"
    if r < 0.78:
        return f"{int(rng.integers(1, 999))},{int(rng.integers(0, 1000)):03d}" if rng.random() < 0.5 \
            else f"{int(rng.integers(1000, 99_999)):,}"
    if r < 0.86:
        return f"{rng.integers(1, 100)}.{rng.integers(0, 10)}%"
    if r < 0.93:
        return f"{int(rng.integers(2, 999))} {_UNITS[rng.integers(len(_UNITS))]}"
    n = int(rng.integers(1, 31))
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


class _Topic:
    def __init__(self, rng: np.random.Generator, vocab: Vocabulary) -> None:
        self.words = [vocab.words[i] for i in vocab.pick(rng, 24, lo=300)]
        self.names = [vocab.person(rng) for _ in range(3)] + [vocab.place(rng) for _ in range(3)]
        kind = ["year", "person", "number", "place"][rng.integers(4)]
        self.kind = kind
        self.answer = {"year": lambda: str(int(rng.integers(1900, 2019))), "person": lambda: vocab.person(rng),
                       "number": _number_answer(rng), "place": lambda: vocab.place(rng)}[kind]()
        q = _QWORDS[kind][rng.integers(len(_QWORDS[kind]))]
        subject = [self.words[i] for i in rng.choice(8, int(rng.integers(2, 5)), replace=False)]
        if rng.random() < 0.5:
            subject.insert(int(rng.integers(len(subject) + 1)), "the")
        if rng.random() < 0.4:
            subject.append(f"in {self.names[3].lower()}")
        self.question = f"{q} {' '.join(subject)}".lower()


def _number_answer(rng: np.random.Generator):
    return lambda: f"{int(rng.integers(2, 9999)):,}"


def _passage(rng: np.random.Generator, vocab: Vocabulary, topic: _Topic, n_words: int, density: float,
             answer: bool) -> str:
    """~n_words words (str.split() tokens) of Wikipedia-like prose with `density` topic words."""
    ranks = vocab.pick(rng, n_words).tolist()
    kinds = rng.random(n_words).tolist()
    decor = rng.random(n_words).tolist()
    out: list[str] = []
    start = True
    i = 0
    while len(out) < n_words:
        k, d = kinds[i % n_words], decor[i % n_words]
        w = vocab.words[ranks[i % n_words]]
        i += 1
        if k < density:
            w = topic.words[int(rng.integers(len(topic.words)))] if k < density * 0.7 else \
                topic.names[int(rng.integers(len(topic.names)))]
        elif k < density + 0.045:
            w = vocab.person(rng) if d < 0.5 else vocab.place(rng)
        elif k < density + 0.085:
            w = _number(rng)
        elif k < density + 0.09:
            w = w.upper()[:4]  # acronyms
        if start or (k > 0.985 and w.islower()):
            w = w[:1].upper() + w[1:]
        start = False
        if d < 0.015:
            w = f"({w}"
            w2 = vocab.words[ranks[(i + 3) % n_words]]
            w = f"{w} {w2})"
        elif d < 0.03:
            w = f"\"{w}\""
        elif d < 0.045:
            w += "'s"
        elif d < 0.055:
            w += "-" + vocab.words[ranks[(i + 7) % n_words]]
        elif d < 0.06:
            w += " –"
        if d > 0.93:
            w += "."
            start = True
        elif d > 0.86:
            w += ","
        elif d > 0.855:
            w += ";"
        out.append(w)
    if answer:
        at = int(rng.integers(len(out)))
        out[at] = f"{out[at]} {topic.answer}"
    text = " ".join(out)
    return text if text.endswith(".") else text + "."


def _title(rng: np.random.Generator, vocab: Vocabulary, topic: _Topic) -> str:
    r = rng.random()
    if r < 0.3:
        return topic.names[int(rng.integers(len(topic.names)))]
    if r < 0.55:
        return vocab.person(rng)
    if r < 0.75:
        return f"{topic.words[int(rng.integers(len(topic.words)))].capitalize()} ({vocab.place(rng)})"
    if r < 0.8:
        return f"{vocab.place(rng)} ({_foreign(rng)})"
    w = " ".join(vocab.words[i] for i in vocab.pick(rng, int(rng.integers(1, 4)), lo=50))
    return w[:1].upper() + w[1:]


def make_record(rng: np.random.Generator, vocab: Vocabulary, n_docs: int, gold_id: int) -> NQRecord:
    """One record: `n_docs` passages of ~100 words, the gold (1-based `gold_id`) answering it."""
    topic = _Topic(rng, vocab)
    docs = []
    for j in range(1, n_docs + 1):
        gold = j == gold_id
        r = rng.random()
        density = 0.12 if gold else 0.06 if r < 0.3 else 0.02 if r < 0.7 else 0.0
        n_words = int(np.clip(rng.normal(93, 8), 60, 120))  # ~100 str.split() words with names and dates
        has_answer = gold or rng.random() < 0.04
        docs.append(f"(Title: {_title(rng, vocab, topic)}) {_passage(rng, vocab, topic, n_words, density, has_answer)}")
    if n_docs > 3 and rng.random() < 0.1:  # pools repeat passages (now and then the gold)
        src = gold_id - 1 if rng.random() < 0.3 else int(rng.integers(n_docs))
        dst = int(rng.integers(n_docs))
        if dst != gold_id - 1:
            docs[dst] = docs[src]
    gold_text = docs[gold_id - 1]
    sentence = next((s for s in gold_text.split(". ") if topic.answer in s), gold_text)
    return NQRecord(topic.question, topic.answer, sentence, docs, gold_id)


def generate_records(n_records: int, seed: int = 0, min_docs: int = 10, max_docs: int = 200) -> Iterator[NQRecord]:
    """Records with uniform 10..200 passages (mean ~105, like the real file's 104)."""
    rng = np.random.default_rng([seed, 15])
    vocab = Vocabulary(rng)
    for _ in range(n_records):
        n = int(rng.integers(min_docs, max_docs + 1))
        yield make_record(rng, vocab, n, int(rng.integers(1, n + 1)))


def to_json_line(rec: NQRecord) -> bytes:
    """A row like the real file's: `prompt` + `completion` = `text`, all three stored, non-ASCII
    as \\uXXXX escapes."""
    text = render_text(rec, INSTRUCTION)
    cut = text.rindex("\nAnswer:") + len("\nAnswer:")
    return json.dumps({"prompt": text[:cut], "completion": text[cut:], "text": text}).encode("ascii")


def generate_lines(n_records: int, seed: int = 0) -> Iterator[bytes]:
    """JSON rows (no trailing newline) of `generate_records`."""
    for rec in generate_records(n_records, seed):
        yield to_json_line(rec)
