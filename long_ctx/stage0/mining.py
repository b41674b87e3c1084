"""Hard-negative mining as users know it from mining tools: BM25 rank ranges, a score margin
against the gold, length matching and an easy:medium:hard mix (docs/stage0.md, "Mining").

Everything here runs per record in the workers (a pure function of the record, the flags, the
seed and the line number), except the easy negatives of a mix: they are documents of *other*
records, so the main process picks them, in input order, from `EasyPool`, a bounded reservoir of
documents of earlier records (`long_ctx.stage0.easy_pool`). A worker hands such a record back
unfinished (`Pending`); `finish` completes it in the main process. Output therefore does not
depend on the number of workers.

Definitions (shared by every mode that takes these flags):

* rank: 1-based position of a candidate (`RecordView.candidates`: not the gold, not a copy of it,
  not containing the answer while the answer filter is on) by descending BM25 score, ties to the
  lower document number; computed before any filter below, so a rank does not move when a filter
  drops another document.
* filters, counted in this order (each counts what survived the previous ones): `range` (rank not
  in A..B), `margin` (score >= R x the gold's score), `length` (word count outside +- TOL of the
  positive's). Without a mix a negative must pass all three; in a mix `hard` ones must, `medium`
  ones only margin and length (the range is what makes a negative hard).
* words: `str.split()` tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from long_ctx.stage0.bm25.codepoints import JoinedDocs, tables
from long_ctx.stage0.bm25.scoring import STREAM_CHARS, iter_whitespace
from long_ctx.stage0.negatives import select_negatives
from long_ctx.stage0.nq_format import SkipRecord

#: Kinds in the order of --negative_mix E:M:H.
MIX_KINDS = ("easy", "medium", "hard")
#: A kind's shortfall is filled by the next kind with a non-zero ratio, in this cycle.
NEXT_KIND = {"easy": "medium", "medium": "hard", "hard": "easy"}
#: The kind a plain strategy's negatives are recorded as.
STRATEGY_KIND = {"least": "least", "hardest": "hard", "random": "random"}
#: Filters in their counting order.
DROP_REASONS = ("range", "margin", "length")
#: `positive_longer_share` above this gets a warning: length alone would tell the label.
LONGER_SHARE_WARNING = 0.65
# The medium draw's random stream, distinct from the `random` strategy's ([seed, line_number]).
_MEDIUM_STREAM = 0x3D1


def parse_range(text: str) -> tuple[int, int]:
    """"A-B" -> (A, B), 1 <= A <= B (1-based, inclusive)."""
    parts = str(text).split("-")
    try:
        a, b = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--negative_range must be A-B with whole numbers, e.g. 2-200; got {text!r}") from None
    if not 1 <= a <= b:
        raise ValueError(f"--negative_range A-B needs 1 <= A <= B (ranks are 1-based), got {text!r}")
    return a, b


def parse_mix(text: str) -> tuple[int, int, int]:
    """"E:M:H" -> (E, M, H), non-negative whole numbers, not all 0."""
    parts = str(text).split(":")
    try:
        ratio = tuple(int(p) for p in parts)
    except ValueError:
        ratio = ()
    if len(ratio) != 3 or min(ratio) < 0 or sum(ratio) == 0:
        raise ValueError(f"--negative_mix must be E:M:H, three whole numbers >= 0 not all 0 (e.g. 5:3:2); got {text!r}")
    return ratio  # type: ignore[return-value]


def mix_counts(ratio: tuple[int, ...], k: int) -> tuple[int, ...]:
    """K split in `ratio` by largest remainders: each kind gets floor(K r / S), and the K left
    over go one each to the largest remainders K r mod S, ties to the kind written first
    (E before M before H). Exact integer arithmetic."""
    s = sum(ratio)
    counts = [k * r // s for r in ratio]
    left = k - sum(counts)
    by_remainder = sorted(range(len(ratio)), key=lambda i: (-(k * ratio[i] % s), i))
    for i in by_remainder[:left]:
        counts[i] += 1
    return tuple(counts)


@dataclass(frozen=True)
class MiningSpec:
    """The parsed mining flags of a run (None: not used)."""

    negative_range: tuple[int, int] | None = None
    max_score_ratio: float | None = None
    mix: tuple[int, int, int] | None = None
    match_length: float | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> "MiningSpec":
        return cls(parse_range(cfg.negative_range) if cfg.negative_range else None, cfg.max_score_ratio,
                   parse_mix(cfg.negative_mix) if cfg.negative_mix else None, cfg.match_length)

    @property
    def active(self) -> bool:
        """Any mining flag used: outputs then carry negative_kinds / negative_ranks."""
        return any(v is not None for v in (self.negative_range, self.max_score_ratio, self.mix, self.match_length))

    def word_band(self, positive_words: int) -> tuple[float, float]:
        """Inclusive word-count band of a negative: |w - P| <= TOL x P (all counts without --match_length)."""
        if self.match_length is None:
            return -math.inf, math.inf
        d = self.match_length * positive_words
        return positive_words - d, positive_words + d


def validate_mining(cfg: Any) -> MiningSpec:
    """The flags' values checked (ValueError naming the flag); returns the spec."""
    spec = MiningSpec.from_config(cfg)
    r = spec.max_score_ratio
    if r is not None and not 0 < r <= 1:
        raise ValueError(f"--max_score_ratio must be in (0, 1], got {r}")
    if spec.match_length is not None and not spec.match_length >= 0:
        raise ValueError(f"--match_length must be >= 0 (a fraction of the positive's words, e.g. 0.2), "
                         f"got {spec.match_length}")
    if spec.mix is not None and cfg.negative_strategy != "least":
        raise ValueError("--negative_mix chooses the negatives itself (hard = hardest in range, medium = random); "
                         f"drop --negative_strategy {cfg.negative_strategy} or the mix")
    return spec


# ---------------------------------------------------------------------------------------------
# Words


def word_count(text: str) -> int:
    """`len(text.split())`, without the list of a huge text's words."""
    if len(text) <= STREAM_CHARS:
        return len(text.split())
    return sum(1 for _ in iter_whitespace(text))


def document_word_counts(joined: JoinedDocs) -> np.ndarray:
    """[N] int64 `len(d.split())` of every document, from the record's joined text (one byte per
    character, shared with the answer filter; the "\n" between documents is whitespace, so no
    word crosses it): a word starts at a non-space character after a space or at the start."""
    b = np.frombuffer(joined.ascii_lowercase_bytes(), np.uint8)
    # ASCII whitespace by comparisons (cheaper than a table lookup per character) ...
    space = (b == 32) | ((b >= 9) & (b <= 13)) | ((b >= 28) & (b <= 31))
    # ... and the few characters >= 128 from their code points.
    high = np.flatnonzero(b >= 0x80)
    if len(high):
        # str.isspace of each (no character beyond the BMP is whitespace: 0xFFFF stands for them)
        space[high] = tables().is_space[np.minimum(joined.cp[high].astype(np.int64), 0xFFFF)]
    starts = np.zeros(len(b) + 1, np.uint8)  # (+1: an empty last document starts at len(b))
    starts[0] = len(b) > 0 and not space[0]
    np.greater(space[:-1], space[1:], out=starts[1:len(b)].view(bool))
    return np.add.reduceat(starts, joined.doc_starts, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Candidates


def candidate_ranks(scores: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """[len(candidates)] 1-based rank of each candidate by descending score, ties to the lower
    document number (candidates are ascending)."""
    order = np.argsort(-scores[candidates], kind="stable")
    ranks = np.empty(len(candidates), np.int64)
    ranks[order] = np.arange(1, len(candidates) + 1)
    return ranks


@dataclass
class Filtered:
    """A record's candidates with their ranks and what the filters left."""

    candidates: np.ndarray  # [C] 0-based document indices, ascending
    ranks: np.ndarray  # [C] 1-based BM25 ranks among the candidates
    in_range: np.ndarray  # [C] bool: rank within --negative_range (all True without it)
    kept: np.ndarray  # [C] bool: passes margin and length (the range not applied)
    drops: dict[str, int]  # candidates dropped by each filter, in DROP_REASONS order
    positive_words: int
    length_short: bool  # --match_length left fewer than the wanted candidates
    words: np.ndarray | None = None  # [C] word counts of the candidates (with --match_length)
    first_longer: bool = True  # --match_length: which side of the positive's length comes first

    def at(self, docs: np.ndarray | list[int]) -> np.ndarray:
        """Positions of candidate documents `docs` in `candidates` (ascending)."""
        return np.searchsorted(self.candidates, docs)

    def rank_of(self, docs: list[int]) -> list[int]:
        return self.ranks[self.at(docs)].tolist() if docs else []

    def balanced(self, docs: np.ndarray) -> np.ndarray:
        """`docs` (candidates, best first) with --match_length: negatives at least as long as the
        positive and shorter ones alternate, each side in its own order, `first_longer` deciding
        which starts (then whichever side is left). Without the alternation, the band's lower half
        would win whenever the pool's documents are mostly shorter than the positive (they are:
        the strategy's order inside the band still follows length), and length would still tell the
        label. Unchanged without --match_length."""
        if self.words is None or len(docs) < 2:
            return docs
        longer = self.words[self.at(docs)] >= self.positive_words
        a, b = (docs[longer], docs[~longer]) if self.first_longer else (docs[~longer], docs[longer])
        n = min(len(a), len(b))
        out = np.empty_like(docs)
        out[0:2 * n:2], out[1:2 * n:2] = a[:n], b[:n]
        out[2 * n:] = np.concatenate([a[n:], b[n:]])
        return out


def margin_limit(gold_score: float, ratio: float) -> float:
    """--max_score_ratio's bound: a negative must score below it. R x the gold's score; for a gold
    scoring <= 0 (BM25 idf goes negative when most query terms are in most documents) R x would
    lie *above* the gold, so the bound is the gold's score lowered by (1 - R) x its magnitude."""
    return ratio * gold_score if gold_score > 0 else gold_score - (1 - ratio) * abs(gold_score)


def filter_candidates(scores: np.ndarray, candidates: np.ndarray, gold: int, spec: MiningSpec, wanted: int,
                      doc_words: Callable[[], np.ndarray], positive_words: int, first_longer: bool = True) -> Filtered:
    """Ranks and filters (module docstring). `doc_words()` gives [N] word counts of every document
    (only called with --match_length)."""
    ranks = candidate_ranks(scores, candidates)
    n = len(candidates)
    in_range = np.ones(n, bool)
    if spec.negative_range is not None:
        a, b = spec.negative_range
        in_range = (ranks >= a) & (ranks <= b)
    margin_ok = np.ones(n, bool)
    if spec.max_score_ratio is not None:
        margin_ok = scores[candidates] < margin_limit(float(scores[gold]), spec.max_score_ratio)
    length_ok = np.ones(n, bool)
    w = None
    if spec.match_length is not None:
        lo, hi = spec.word_band(positive_words)
        w = doc_words()[candidates]
        length_ok = (w >= lo) & (w <= hi)
    drops = {"range": int((~in_range).sum()),
             "margin": int((in_range & ~margin_ok).sum()),
             "length": int((in_range & margin_ok & ~length_ok).sum())}
    kept = margin_ok & length_ok
    # Short by length: fewer than wanted are left, and the length filter is what took some away.
    base = margin_ok if spec.mix is not None else margin_ok & in_range
    left = int((base & length_ok).sum())
    short = spec.match_length is not None and left < wanted and int(base.sum()) > left
    return Filtered(candidates, ranks, in_range, kept, drops, positive_words, bool(short), w, first_longer)


#: Skip reasons: no candidate was left, named by the filter that took the last ones.
EMPTY_REASONS = {"range": "no_negative_in_range", "margin": "no_negative_below_max_score_ratio",
                 "length": "no_negative_of_matching_length"}


def empty_reason(f: Filtered) -> str:
    """Why nothing is left (the record had candidates): the last filter that dropped any."""
    last = [r for r in DROP_REASONS if f.drops[r]]
    return EMPTY_REASONS[last[-1]] if last else "no_negative_candidate"


@dataclass
class Chosen:
    """Negatives in output order: 0-based document indices (-1 for an easy one, whose text is in
    `easy_texts`), kinds and ranks (None for easy)."""

    docs: list[int] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    ranks: list[int | None] = field(default_factory=list)
    easy_texts: list[str] = field(default_factory=list)
    easy_words: list[int] = field(default_factory=list)
    shortfall: dict[str, int] = field(default_factory=dict)


def choose_by_strategy(scores: np.ndarray, f: Filtered, strategy: str, k: int, seed: int,
                       line_number: int) -> Chosen:
    """Without a mix: the strategy inside what the filters left (select_negatives' ties and seeding)."""
    usable = f.kept & f.in_range
    if not usable.any():
        raise SkipRecord(empty_reason(f))
    every = f.candidates[usable]
    picked = f.balanced(np.array(select_negatives(scores, every, strategy, len(every), seed, line_number),
                                 np.int64))[:k].tolist()
    kind = STRATEGY_KIND[strategy]
    return Chosen(picked, [kind] * len(picked), f.rank_of(picked))


@dataclass
class Pending:
    """A mix record's choices so far, finished by `finish` (in the worker when the mix has no easy
    kind, else in the main process, which holds the easy pool)."""

    counts: tuple[int, int, int]  # (E, M, H) negatives wanted
    hard: list[tuple[int, int]]  # (document, rank), hardest first, at most K
    medium: list[tuple[int, int]]  # (document, rank), seeded random order, at most 2K
    needle: str  # the answer lowercased ("" = none): easy negatives never contain it
    own_lengths: frozenset  # characters of each of the record's documents: easy_pool.EasyPool.pick
    word_band: tuple[float, float]
    # document -> (text, score, words; None: not counted yet, resolve counts the chosen ones)
    lookup: dict[int, tuple[str, float, int | None]] = field(default_factory=dict)
    positive_words: int | None = None  # with --match_length: easy ones alternate sides too (Filtered.balanced)
    first_longer: bool = True


def mix_pending(scores: np.ndarray, f: Filtered, spec: MiningSpec, k: int, seed: int, line_number: int,
                answer: str, own_lengths: Callable[[], frozenset]) -> Pending:
    """The worker's part of a mix: the hard list (in range, hardest first, at most K) and a seeded
    random order of the medium candidates (at most 2K: enough for K after the hard ones)."""
    counts = mix_counts(spec.mix, k)
    hard_idx = f.candidates[f.kept & f.in_range]
    hard = f.balanced(hard_idx[np.argsort(-scores[hard_idx], kind="stable")])[:k].tolist()
    med_idx = f.candidates[f.kept]
    medium = f.balanced(med_idx[np.random.default_rng([seed, line_number, _MEDIUM_STREAM]).permutation(len(med_idx))])
    medium = medium[: 2 * k].tolist()
    return Pending(counts, list(zip(hard, f.rank_of(hard))), list(zip(medium, f.rank_of(medium))), answer.lower(),
                   own_lengths() if counts[0] else frozenset(), spec.word_band(f.positive_words),
                   positive_words=f.positive_words if spec.match_length is not None else None,
                   first_longer=f.first_longer)


EasyPicker = Callable[[Pending, int, set], list[tuple[str, int]]]


def finish(p: Pending, easy: EasyPicker | None = None) -> Chosen:
    """Allocate the mix: hard first, then medium (not a hard one), then easy; a kind short of its
    count passes the rest to the next kind with a non-zero ratio (NEXT_KIND), until every kind
    is exhausted. Output order: hard, medium, easy."""
    ratio_on = dict(zip(MIX_KINDS, (c > 0 for c in p.counts)))
    want = dict(zip(MIX_KINDS, p.counts))
    got: dict[str, list] = {k: [] for k in MIX_KINDS}
    taken: set[int] = set()
    easy_taken: set = set()
    exhausted = {k: False for k in MIX_KINDS}
    shortfall = {k: 0 for k in MIX_KINDS}
    while any(want.values()) and not all(exhausted[k] or not ratio_on[k] for k in MIX_KINDS):
        for kind in ("hard", "medium", "easy"):
            n = want[kind]
            if not n:
                continue
            want[kind] = 0
            if kind == "easy":
                new = easy(p, n, easy_taken) if easy is not None else []
            else:
                source = p.hard if kind == "hard" else p.medium
                new = [(d, r) for d, r in source if d not in taken][:n]
                taken.update(d for d, _ in new)
            got[kind] += new
            if len(new) < n:
                exhausted[kind] = True
                shortfall[kind] += n - len(new)
                nxt = NEXT_KIND[kind]
                while not ratio_on[nxt]:
                    nxt = NEXT_KIND[nxt]
                want[nxt] += n - len(new)
    c = Chosen(shortfall=shortfall)
    for kind in ("hard", "medium"):
        for d, r in got[kind]:
            c.docs.append(d)
            c.kinds.append(kind)
            c.ranks.append(r)
    for text, words in got["easy"]:
        c.docs.append(-1)
        c.kinds.append("easy")
        c.ranks.append(None)
        c.easy_texts.append(text)
        c.easy_words.append(words)
    return c


@dataclass
class Negative:
    """One chosen negative, resolved: id is the 1-based document number, 0 for an easy one (it
    is not in this record's pool); rank and score None for an easy one (not scored here)."""

    text: str
    id: int
    kind: str
    rank: int | None
    score: float | None
    words: int


def resolve(c: Chosen, lookup: Callable[[int], tuple[str, float, int | None]]) -> list[Negative]:
    """`c`'s negatives with texts, scores and word counts (`lookup(document)` -> (text, score,
    words or None to count them here))."""
    out, e = [], 0
    for d, kind, rank in zip(c.docs, c.kinds, c.ranks):
        if d < 0:
            out.append(Negative(c.easy_texts[e], 0, kind, None, None, c.easy_words[e]))
            e += 1
        else:
            text, score, words = lookup(d)
            out.append(Negative(text, d + 1, kind, rank, score, word_count(text) if words is None else words))
    return out


def mine(view: Any, spec: MiningSpec, strategy: str, k: int, seed: int) -> tuple[Chosen | Pending, Filtered]:
    """A record's negatives by the mining flags (`view`: a modes.RecordView): a finished `Chosen`,
    or a `Pending` mix whose easy kind the main process fills. Raises SkipRecord."""
    docs, scores = view.record.documents, view.scores
    if len(view.candidates) == 0:
        raise SkipRecord("no_negative_candidate")
    words_cache: list[np.ndarray] = []

    def doc_words() -> np.ndarray:
        if not words_cache:
            joined = view.joined if view.joined is not None else JoinedDocs(docs)
            words_cache.append(document_word_counts(joined))
        return words_cache[0]

    f = filter_candidates(scores, view.candidates, view.gold, spec, k, doc_words, word_count(docs[view.gold]),
                          (seed + view.line_number) % 2 == 0)
    if spec.mix is None:
        return choose_by_strategy(scores, f, strategy, k, seed, view.line_number), f
    if not f.kept.any():
        raise SkipRecord(empty_reason(f))
    p = mix_pending(scores, f, spec, k, seed, view.line_number, view.record.answer, lambda: frozenset(map(len, docs)))
    for d, _ in (*p.hard, *p.medium):
        p.lookup[d] = (docs[d], float(scores[d]), int(words_cache[0][d]) if words_cache else None)
    return (p if p.counts[0] else finish(p)), f


class MiningStats:
    """Counts by kind, candidates dropped by reason, shortfalls (main process)."""

    def __init__(self) -> None:
        self.kinds = {k: 0 for k in (*MIX_KINDS, "least", "random")}
        self.drops = {r: 0 for r in DROP_REASONS}
        self.shortfall = {k: 0 for k in MIX_KINDS}
        self.length_short = 0

    def add(self, info: dict[str, Any]) -> None:
        for kind in info["kinds"]:
            self.kinds[kind] += 1
        for r, n in info["drops"].items():
            self.drops[r] += n
        for kind, n in info.get("shortfall", {}).items():
            self.shortfall[kind] += n
        self.length_short += info["length_short"]

    def summary(self) -> dict[str, Any]:
        return {"mining": {
            "negatives_by_kind": {k: v for k, v in self.kinds.items() if v},
            # Candidates dropped, counted in this order: outside --negative_range, then at or above
            # --max_score_ratio x the gold's score, then outside --match_length's word band.
            "candidates_dropped_by_reason": self.drops,
            # --negative_mix: negatives a kind was asked for and could not give (passed on).
            "mix_shortfall_by_kind": self.shortfall,
            # Records where --match_length left fewer than the wanted candidates.
            "records_short_by_match_length": self.length_short,
        }}


def mining_lines(stats: dict[str, Any]) -> list[str]:
    m = stats.get("mining")
    if not m:
        return []
    kinds = "  ".join(f"{k} {v:,}" for k, v in m["negatives_by_kind"].items())
    drops = "  ".join(f"{k} {v:,}" for k, v in m["candidates_dropped_by_reason"].items())
    # (window mode records no kinds: its negatives are windows, not one ranked document each)
    out = [f"  negatives        {kinds}"] if kinds else []
    out.append(f"  dropped          {drops}  (candidates, by filter)")
    short = {k: v for k, v in m["mix_shortfall_by_kind"].items() if v}
    if short:
        out.append("  mix shortfall    " + "  ".join(f"{k} {v:,}" for k, v in short.items())
                   + "  (filled from the next kind)")
    if m["records_short_by_match_length"]:
        out.append(f"  records short by --match_length {m['records_short_by_match_length']:,}")
    return out


# ---------------------------------------------------------------------------------------------
# Length statistics (main process)


class WordStats:
    """Words of positives and negatives, and how often the positive is the longer one."""

    def __init__(self) -> None:
        from long_ctx.common.lengths import LengthCounter

        self.positive = LengthCounter()
        self.negative = LengthCounter()
        self.pairs = 0
        self.longer = 0

    def add(self, positive_words: int, negative_words: list[int]) -> None:
        self.positive.add([positive_words])
        self.negative.add(negative_words)
        self.pairs += len(negative_words)
        self.longer += sum(positive_words > w for w in negative_words)

    def summary(self) -> dict[str, Any]:
        p, n = self.positive.summary(), self.negative.summary()
        share = round(self.longer / self.pairs, 4) if self.pairs else None
        return {"words": {
            "positive": {"mean": p["mean"], "median": p["p50"], "count": p["count"]},
            "negative": {"mean": n["mean"], "median": n["p50"], "count": n["count"]},
            "pairs": self.pairs,
            # Share of (positive, negative) pairs where the positive has more words: what a
            # "pick the longer one" rule would score pairwise, without reading the question.
            "positive_longer_share": share,
            "warning": share is not None and share > LONGER_SHARE_WARNING,
        }}


def word_lines(stats: dict[str, Any]) -> list[str]:
    w = stats.get("words")
    if not w or not w["pairs"]:
        return []
    p, n = w["positive"], w["negative"]
    out = [f"  words            positive mean {p['mean']:.1f} median {p['median']}, negative mean {n['mean']:.1f} "
           f"median {n['median']}; positive longer in {w['positive_longer_share']:.1%} of {w['pairs']:,} pairs"]
    if w["warning"]:
        hint = ("window negatives are matched in tokens (--context_tolerance), not words"
                if stats.get("mode") == "window" else "try --match_length 0.2")
        out.append(f"  warning: the positive is the longer text in more than {LONGER_SHARE_WARNING:.0%} of pairs, so "
                   f"length alone tells the label; {hint} (docs/stage0.md)")
    return out
