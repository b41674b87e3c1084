"""`--mode window`: multi-document windows of about `--context_tokens` RWKV World tokens.

A window is a run of consecutive documents of the record's own pool, in pool order, each exactly
as passage mode writes it, joined by SEPARATOR (a blank line). The positive is a window that
contains the gold document and has `(1 - tol) x T .. T` tokens; each negative is a window of
consecutive non-gold documents (documents containing the answer left out too while
--filter_answer_docs is on) within `+- tol` of that positive's own token count, so that length
cannot give the label away. Negatives are pairwise disjoint and chosen by the strategy on the
BM25 score of their best document.

Token counts are exact, not estimates: every document is encoded once with the project's
tokenizer (the one stage 1 uses), and SEPARATOR is chosen so that a join never changes the count:
`tokens(A + SEPARATOR + B) == tokens(A) + 1 + tokens(B)` for any two documents (they are stripped
and non-empty). In the World vocab no token starts with a newline and continues with anything
but whitespace, and the only tokens that run from non-whitespace into a newline are `…\\n`,
`。\\n` and `，\\n`: one token for the character and the first newline, then one for the second
newline, the same count (`separator_is_additive` checks this on the vocab; the tests check the
windows themselves with TRIE_TOKENIZER). So a window's count is a prefix-sum difference, and the
chosen windows are encoded once more whole to confirm it.

Only `WorldTokenizer.encode` (one string, on the calling thread) is used here, never
`encode_batch`: that starts a rayon thread pool, and a child forked after its parent started one
hangs in its first `encode_batch` (measured). The tokenizer is loaded in the main process before
the workers are forked (`prepare`), so they share its ~235 MB instead of loading it each.

`build_windows` is the construction; the evaluator (`--mode window` of
cross_encoder/2_evaluate_ce.py) calls it too, so evaluation windows are built exactly as training
rows are.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from long_ctx.common.lengths import LengthCounter
from long_ctx.stage0.mining import margin_limit, word_count
from long_ctx.stage0.modes import RecordView
from long_ctx.stage0.negatives import STRATEGIES
from long_ctx.stage0.nq_format import SkipRecord

SEPARATOR = "\n\n"
SEPARATOR_TOKENS = 1
GOLD_POSITIONS = ("uniform", "natural")
#: Skip reasons of this mode (besides the parser's).
SKIP_REASONS = {
    "empty_gold_document": "the gold document is empty",
    "gold_longer_than_context": "the gold document alone has more than --context_tokens tokens",
    "pool_shorter_than_context": "the pool's documents (without copies of the gold) have fewer than "
                                 "(1 - tolerance) x --context_tokens tokens in all",
    "no_window_of_context_size": "the pool is long enough, but no run of whole documents around the gold "
                                 "has between (1 - tolerance) x T and T tokens",
    "no_negative_window": "a positive was found, but no run of allowed non-gold documents within +- tolerance "
                          "of its length",
}
HISTOGRAM_BINS = 10


def count_tokens(texts: Sequence[str]) -> np.ndarray:
    """[n] int64 RWKV World token counts, exactly as stage 1 tokenizes (`encode`, never `encode_batch`)."""
    from long_ctx.world_tokenizer import get_tokenizer

    encode = get_tokenizer().encode
    return np.fromiter((len(encode(t)) if t else 0 for t in texts), dtype=np.int64, count=len(texts))


def separator_is_additive(vocab: Sequence[bytes]) -> bool:
    """Whether, with this vocab (token byte strings), `tokens(A + SEPARATOR + B) == tokens(A) + 1 +
    tokens(B)` for every stripped non-empty A and B, by the argument of the module docstring:

    * no token that starts with a newline holds anything but whitespace (so none reaches into B);
    * a token that runs from a non-whitespace byte (the end of A) into a newline ends with that
      newline, and its part before it is a token itself: greedy matching then takes "x\n" + "\n"
      where A alone ends with "x", the same count.
    """
    tokens = set(vocab) - {b""}
    ws = frozenset(b" \t\n\r\x0b\x0c")
    if not {b"\n", b"\n\n"} <= tokens:
        return False
    for t in tokens:
        if b"\n" not in t:
            continue
        if t[0] == 0x0A and any(c not in ws for c in t):
            return False
        for i in range(1, len(t)):
            if t[i] == 0x0A and t[i - 1] not in ws and (t[i:] != b"\n" or t[:i] not in tokens):
                return False
    return True


@dataclass
class WindowSpec:
    """How windows are built (stage 0's window flags; the evaluator passes its own)."""

    context_tokens: int
    tolerance: float = 0.05
    gold_position: str = "uniform"
    num_negatives: int = 1
    strategy: str = "least"
    seed: int = 0
    filter_answer_docs: bool = True

    @classmethod
    def from_config(cls, cfg: Any) -> "WindowSpec":
        return cls(cfg.context_tokens, cfg.context_tolerance, cfg.gold_position, cfg.num_negatives,
                   cfg.negative_strategy, cfg.seed, cfg.filter_answer_docs)

    def positive_band(self) -> tuple[int, int]:
        """Inclusive token range of a positive: (1 - tol) x T <= n <= T."""
        return math.ceil((1 - self.tolerance) * self.context_tokens), self.context_tokens

    def negative_band(self, positive_tokens: int) -> tuple[int, int]:
        """Inclusive token range of a negative: |n - W| <= tol x W for the positive's W tokens."""
        d = math.floor(self.tolerance * positive_tokens)
        return positive_tokens - d, positive_tokens + d


@dataclass
class Windows:
    """One record's windows: document indices are 0-based positions in the record's pool."""

    positive_docs: list[int]
    positive_tokens: int
    gold_offset: int  # tokens before the gold's first token in the positive
    positive: str
    negative_docs: list[list[int]]
    negative_tokens: list[int]
    negatives: list[str]

    @property
    def gold_position(self) -> float:
        """Relative token offset of the gold's first token in the positive, in [0, 1)."""
        return self.gold_offset / self.positive_tokens


def _prefix(counts: np.ndarray) -> np.ndarray:
    """[m+1] C with C[k] = sum over the first k documents of (tokens + separator): a window of
    documents [a, b) has C[b] - C[a] - SEPARATOR_TOKENS tokens."""
    out = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts + SEPARATOR_TOKENS, out=out[1:])
    return out


def _join(docs: Sequence[str], idx: Sequence[int]) -> str:
    return SEPARATOR.join(docs[i] for i in idx)


def _ragged(starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner, value): every value in [starts[k], stops[k]] (inclusive), with its k."""
    n = np.maximum(stops - starts + 1, 0)
    owner = np.repeat(np.arange(len(starts)), n)
    first = np.repeat(np.cumsum(n) - n, n)
    return owner, starts[owner] + np.arange(int(n.sum())) - first


def _positive(view: RecordView, spec: WindowSpec, counts: np.ndarray, hi: int) -> tuple[list[int], int, int]:
    """(document indices in window order, tokens, tokens before the gold) of the positive, at
    most `hi` tokens."""
    docs, gold = view.record.documents, view.gold
    gold_text, gold_tokens = docs[gold], int(counts[gold])
    if not gold_text:
        raise SkipRecord("empty_gold_document")
    lo = spec.positive_band()[0]
    if gold_tokens > spec.context_tokens:
        raise SkipRecord("gold_longer_than_context")
    # The other documents in pool order; the gold once: copies of it (up to whitespace) and
    # documents quoting it whole stay out. The window is seq[a:k] + gold + seq[k:b].
    same = view.identical if view.identical is not None else np.zeros(len(docs), bool)
    seq = [i for i, d in enumerate(docs) if i != gold and d and not same[i] and gold_text not in d]
    p = int(np.searchsorted(seq, gold))  # the gold's own place: between seq[p-1] and seq[p]
    C = _prefix(counts[seq])
    m = len(seq)
    if C[m] + gold_tokens < lo:
        raise SkipRecord("pool_shorter_than_context")
    if spec.gold_position == "uniform":
        target = np.random.default_rng([spec.seed, view.line_number, 0]).random()
        ks = np.arange(m + 1)
    else:  # natural: the pool's own order, the gold where the pool puts it
        target = C[p] / (C[m] + gold_tokens)
        ks = np.array([p])
    # Every start a whose documents before the gold leave it room, for every insertion point k.
    first = np.searchsorted(C, C[ks] - (hi - gold_tokens), "left")
    owner, a = _ragged(first, ks)
    k = ks[owner]
    offset = C[k] - C[a]  # tokens before the gold's first token (documents + separators)
    b_lo = np.maximum(k, np.searchsorted(C, C[a] + lo - gold_tokens, "left"))
    b_hi = np.minimum(m, np.searchsorted(C, C[a] + hi - gold_tokens, "right") - 1)
    ok = b_lo <= b_hi
    a, k, offset, b_lo, b_hi = a[ok], k[ok], offset[ok], b_lo[ok], b_hi[ok]
    if not len(a):
        raise SkipRecord("no_window_of_context_size")
    # For each (a, k), the ends around the length that puts the gold at the target.
    ideal = offset / target if target > 0 else np.full(len(a), np.inf)
    above = np.clip(np.searchsorted(C, np.minimum(C[a] + ideal - gold_tokens, C[m] + 1), "left"), b_lo, b_hi)
    # (and the longest end: all ends tie when the gold comes first)
    a, k, offset = np.tile(a, 3), np.tile(k, 3), np.tile(offset, 3)
    b = np.concatenate([above, np.maximum(above - 1, b_lo), b_hi])
    tokens = C[b] - C[a] + gold_tokens
    # Closest to the target; then the gold moved least from its own place; then longer; then earlier.
    order = np.lexsort((a, -tokens, np.abs(k - p), np.abs(offset / tokens - target)))
    for j in order.tolist():
        idx = [*seq[a[j]:k[j]], gold, *seq[k[j]:b[j]]]
        if _join(docs, idx).count(gold_text) == 1:  # (a copy across a join would break "exactly once")
            return idx, int(tokens[j]), int(offset[j])
    raise SkipRecord("no_window_of_context_size")


def _negative_sequence(view: RecordView) -> list[int]:
    """The documents negatives are runs of: the allowed candidates (pool order) that are not
    empty and do not quote the gold whole."""
    docs = view.record.documents
    gold_text = docs[view.gold]
    return [i for i in view.candidates.tolist() if docs[i] and gold_text not in docs[i]]


def _negatives(view: RecordView, spec: WindowSpec, counts: np.ndarray, seq: list[int], positive_tokens: int
               ) -> list[tuple[list[int], int]]:
    docs = view.record.documents
    gold_text = docs[view.gold]
    needle = view.record.answer.lower() if spec.filter_answer_docs else ""
    lo, hi = spec.negative_band(positive_tokens)
    C = _prefix(counts[seq])
    m, s = len(seq), SEPARATOR_TOKENS
    starts = np.arange(m)
    b_lo = np.maximum(starts + 1, np.searchsorted(C, C[starts] + s + lo, "left"))
    b_hi = np.minimum(m, np.searchsorted(C, C[starts] + s + hi, "right") - 1)
    ok = b_lo <= b_hi
    a, b_lo, b_hi = starts[ok], b_lo[ok], b_hi[ok]
    if not len(a):
        raise SkipRecord("no_negative_window")
    # One window per start: the end whose length is closest to the positive's (ties: the shorter),
    # so that no strategy prefers short or long windows.
    above = np.searchsorted(C, C[a] + s + positive_tokens, "left")
    # A start near the end of the sequence, whose runs all stay shorter than the positive, would
    # only add short windows: left out.
    a, b_lo, b_hi, above = a[above <= m], b_lo[above <= m], b_hi[above <= m], above[above <= m]
    if not len(a):
        raise SkipRecord("no_negative_window")
    above = np.clip(above, b_lo, b_hi)
    below = np.maximum(above - 1, b_lo)
    b = np.where(np.abs(C[below] - C[a] - s - positive_tokens) <= np.abs(C[above] - C[a] - s - positive_tokens),
                 below, above)
    tokens = C[b] - C[a] - s
    scores = view.scores[seq]
    # The strategy's key: the best score among the documents both candidate ends of a start share
    # (all but a last one), so that it does not favour whichever end leaves a document out.
    shared = np.maximum(below, a + 1)
    best = np.array([scores[x:y].max() for x, y in zip(a.tolist(), shared.tolist())])
    diff = np.abs(tokens - positive_tokens)
    if spec.strategy == "random":
        order = np.random.default_rng([spec.seed, view.line_number, 1]).permutation(len(a))
    elif spec.strategy in ("least", "hardest"):
        order = np.lexsort((a, diff, best if spec.strategy == "least" else -best))
    else:
        raise ValueError(f"unknown negative strategy {spec.strategy!r}; choose one of {STRATEGIES}")
    used = np.zeros(m, bool)
    chosen: list[tuple[list[int], int]] = []
    for j in order.tolist():
        x, y = int(a[j]), int(b[j])
        if used[x:y].any():
            continue
        idx = seq[x:y]
        text = _join(docs, idx)
        if gold_text in text or (needle and needle in text.lower()):
            continue  # only across a join: each document was checked on its own
        used[x:y] = True
        chosen.append((idx, int(tokens[j])))
        if len(chosen) == spec.num_negatives:
            break
    if not chosen:
        raise SkipRecord("no_negative_window")
    return chosen


def build_windows(view: RecordView, spec: WindowSpec) -> Windows:
    """The record's positive window and up to `spec.num_negatives` negative windows; raises
    SkipRecord (reasons in SKIP_REASONS). A pure function of its arguments (seeded by
    `spec.seed` and `view.line_number`)."""
    docs = view.record.documents
    counts = count_tokens(docs)
    seq = _negative_sequence(view)
    pos_idx, pos_tokens, offset = _positive(view, spec, counts, spec.context_tokens)
    try:
        negs = _negatives(view, spec, counts, seq, pos_tokens)
    except SkipRecord:
        # A small pool: every run of negative documents is shorter than this positive. A shorter
        # positive, no longer than all of them together, may still be in the band and matched.
        longest = int(counts[seq].sum()) + (len(seq) - 1) * SEPARATOR_TOKENS
        if not spec.positive_band()[0] <= longest < pos_tokens:
            raise
        try:
            pos_idx, pos_tokens, offset = _positive(view, spec, counts, longest)
            negs = _negatives(view, spec, counts, seq, pos_tokens)
        except SkipRecord:
            raise SkipRecord("no_negative_window") from None
    positive = _join(docs, pos_idx)
    negatives = [_join(docs, idx) for idx, _ in negs]
    # The counts above are sums over documents (exact by the separator's property); the windows
    # themselves are encoded once more to confirm it: a mismatch is a bug, not bad input.
    expected = [pos_tokens] + [n for _, n in negs]
    got = count_tokens([positive, *negatives]).tolist()
    if got != expected:
        raise RuntimeError(f"line {view.line_number}: window token counts {got} differ from the sums of their "
                           f"documents {expected}; the separator {SEPARATOR!r} is not additive for this tokenizer")
    return Windows(pos_idx, pos_tokens, offset, positive, [idx for idx, _ in negs], [n for _, n in negs], negatives)


class WindowStats:
    """Window lengths, positive - negative differences and where the gold sits (main process)."""

    def __init__(self) -> None:
        self.positive = LengthCounter()
        self.negative = LengthCounter()
        self.docs_positive = LengthCounter()
        self.docs_negative = LengthCounter()
        self.pairs = 0
        self.signed = 0
        self.absolute = 0
        self.histogram = np.zeros(HISTOGRAM_BINS, dtype=np.int64)

    def add(self, info: dict[str, Any]) -> None:
        w, negs = info["positive_tokens"], info["negative_tokens"]
        self.positive.add([w])
        self.negative.add(negs)
        self.docs_positive.add([info["positive_documents"]])
        self.docs_negative.add(info["negative_documents"])
        self.pairs += len(negs)
        self.signed += sum(w - n for n in negs)
        self.absolute += sum(abs(w - n) for n in negs)
        self.histogram[min(HISTOGRAM_BINS - 1, int(info["gold_position"] * HISTOGRAM_BINS))] += 1

    def summary(self) -> dict[str, Any]:
        pairs = max(self.pairs, 1)
        return {
            "window_separator": SEPARATOR,
            "positive_tokens": self.positive.summary(),
            "negative_tokens": self.negative.summary(),
            "documents_per_positive": self.docs_positive.summary(),
            "documents_per_negative": self.docs_negative.summary(),
            # Over every (positive, negative) pair: the signed mean must stay near 0.
            "positive_minus_negative_tokens": {"pairs": self.pairs, "mean_signed": round(self.signed / pairs, 3),
                                               "mean_absolute": round(self.absolute / pairs, 3)},
            "gold_position_histogram": {
                "bin_edges": [round(i / HISTOGRAM_BINS, 2) for i in range(HISTOGRAM_BINS + 1)],
                "counts": self.histogram.tolist()},
        }

    def lines(self, stats: dict[str, Any]) -> list[str]:
        if not stats.get("positive_tokens", {}).get("count"):
            return []
        p, n, d = stats["positive_tokens"], stats["negative_tokens"], stats["positive_minus_negative_tokens"]
        hist = stats["gold_position_histogram"]["counts"]
        return [
            f"  window tokens    positive mean {p['mean']:.1f} ({p['min']}..{p['max']}), "
            f"negative mean {n['mean']:.1f} ({n['min']}..{n['max']})",
            f"  positive - negative tokens: mean {d['mean_signed']:+.2f}, mean absolute {d['mean_absolute']:.2f} "
            f"({d['pairs']:,} pairs)",
            "  gold position    " + " ".join(f"{c}" for c in hist) + "  (records per tenth of the positive)",
        ]


class WindowMode:
    name = "window"

    def prepare(self) -> None:
        from long_ctx.world_tokenizer import get_tokenizer

        get_tokenizer()

    def build(self, view: RecordView, cfg: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        rec = view.record
        drops = {"range": 0, "margin": 0, "length": 0}
        if cfg.max_score_ratio is not None:
            # The margin is a per-document rule here: a document scoring >= R x the gold's is left
            # out of every negative window (like the answer filter), before the windows are built.
            ok = view.scores[view.candidates] < margin_limit(float(view.scores[view.gold]), cfg.max_score_ratio)
            drops["margin"] = int((~ok).sum())
            view = dataclasses.replace(view, candidates=view.candidates[ok])
        w = build_windows(view, WindowSpec.from_config(cfg))
        out = {
            "mode": self.name,
            "question": rec.question,
            "answer": rec.answer,
            "long_answer": rec.long_answer,
            "positive": w.positive,
            "negative": w.negatives[0],
            "negatives": w.negatives,
            "gold_id": rec.gold_id,
            "positive_doc_ids": [i + 1 for i in w.positive_docs],
            "negative_doc_ids": [[i + 1 for i in idx] for idx in w.negative_docs],
            "gold_position": w.gold_position,
            "positive_tokens": w.positive_tokens,
            "negative_tokens": w.negative_tokens,
            "context_tokens": cfg.context_tokens,
            "num_documents": len(rec.documents),
            "line_number": view.line_number,
        }
        info = {"negatives": len(w.negatives), "positive_tokens": w.positive_tokens,
                "negative_tokens": w.negative_tokens, "gold_position": w.gold_position,
                "positive_documents": len(w.positive_docs), "negative_documents": [len(x) for x in w.negative_docs],
                "positive_words": word_count(w.positive), "negative_words": [word_count(t) for t in w.negatives]}
        if cfg.max_score_ratio is not None:
            info.update(kinds=[], drops=drops, length_short=False)
        return out, info

    def new_stats(self) -> WindowStats:
        return WindowStats()


MODE = WindowMode()
