import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stage0_helpers import ref_scores, ref_whitespace, ref_words

from long_ctx.stage0.bm25 import (bm25_scores, index_documents, rank_documents, scoring, term_index,
                                  tokenize_whitespace, tokenize_words)

# Characters where Unicode subtleties bite: case mappings that change length or need context
# (İ, Σ), non-ASCII lowercasing to ASCII (Kelvin sign), marks that are not \w, digits and
# numerals of other scripts, non-ASCII whitespace, astral letters/emoji, '_', control chars.
TRICKY = list("abcABC_09 \t\n.,-'\x0b\x1c\x1f") + [
    "é", "É", "İ", "ı", "Σ", "ς", "σ", "K", "ß", "ẞ", "\u0307", "\u0301", "\xa0", "\x85", "\u2028",
    "\u3000", "😀", "𝐀", "𐐀", "ǅ", "Ⅻ", "½", "٣", "ﬁ", "Ω", "中", "\u200b", "\x00",
]
_tricky_text = st.lists(st.sampled_from(TRICKY), max_size=25).map("".join)


def assert_same(documents, query, tokenizer):
    ref_tok = ref_words if tokenizer == "words" else ref_whitespace
    if not any(ref_tok(d) for d in documents):
        # rank_bm25 raises ZeroDivisionError on a corpus without tokens; we score zeros.
        assert not bm25_scores(documents, query, tokenizer).any()
        return
    expected = ref_scores(documents, query, tokenizer)
    got = bm25_scores(documents, query, tokenizer)
    assert got.dtype == np.float64 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=0)
    # Stronger than asked: the same float operations in the same order give the same bits,
    # which is what keeps tie-breaking identical to rank_bm25.
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("tokenizer", ["words", "whitespace"])
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=st.lists(_tricky_text, min_size=1, max_size=6), query=_tricky_text)
def test_equals_rank_bm25_on_tricky_unicode(tokenizer, docs, query):
    assert_same(docs, query, tokenizer)


@pytest.mark.parametrize("tokenizer", ["words", "whitespace"])
def test_equals_rank_bm25_on_random_pools(tokenizer):
    rng = random.Random(7)
    vocab = [f"w{i}" for i in range(40)] + ["The", "the", "THE", "café", "Café", "x_y"]
    for trial in range(150):
        n_docs = rng.randint(1, 30)
        # Small vocabularies put terms in more than half the documents (negative idf -> the
        # epsilon floor); duplicated documents and empty ones create exact ties.
        size = rng.choice([3, 8, len(vocab)])
        docs = [" ".join(rng.choices(vocab[:size], k=rng.randint(0, 15))) for _ in range(n_docs)]
        if n_docs > 2:
            docs[rng.randrange(n_docs)] = docs[0]
        query_terms = rng.choices(vocab[:size] + ["absent"], k=rng.randint(0, 6))
        query_terms += query_terms[:2]  # repeated query terms count twice
        assert_same(docs, " ".join(query_terms), tokenizer)


def test_negative_idf_floor_is_exercised():
    docs = ["a a b", "a c", "a d", "a b e"]  # 'a' in all 4 documents: negative idf
    assert_same(docs, "a b", "words")
    assert_same(docs, "a", "words")
    assert bm25_scores(docs, "a").min() > 0  # floored to epsilon * mean idf, not zeroed


@pytest.mark.parametrize("stream_chars", [1, 1 << 20])
@settings(max_examples=200, deadline=None)
@given(text=_tricky_text)
def test_token_streams_equal_the_tokenizers(stream_chars, text):
    # The exact path counts tokens one at a time for huge texts (regex \S+ / \w+ matches).
    old = scoring.STREAM_CHARS
    try:
        scoring.STREAM_CHARS = stream_chars
        assert list(scoring.iter_words(text)) == ref_words(text)
        assert list(scoring.iter_whitespace(text)) == ref_whitespace(text)
    finally:
        scoring.STREAM_CHARS = old


def test_tokenizer_definitions():
    text = "İstanbul's ΟΔΟΣ café_2 x\xa0y"
    assert tokenize_words(text) == ["i̇stanbul", "s", "οδος", "café_2", "x", "y"]
    assert tokenize_whitespace(text) == ["İstanbul's", "ΟΔΟΣ", "café_2", "x", "y"]


def test_hash_collisions_are_detected_and_fall_back(monkeypatch):
    real_keys = term_index._keys

    def weak_keys(values, starts, ends):  # distinct keys that all share the high (grouping) bits
        return real_keys(values, starts, ends) % np.uint64(7)

    monkeypatch.setattr(term_index, "_keys", weak_keys)
    docs = ["ab abc gamma", "abc delta", "gamma gamma epsilon ab"]
    assert isinstance(index_documents(docs), term_index.ExactTermIndex)
    assert_same(docs, "abc gamma zeta ab", "words")


def test_fast_path_is_taken_on_ordinary_text():
    docs = ["Ærø island (Denmark) has ferries.", "Ferries leave Ærøskøbing daily — İzmir too."]
    assert isinstance(index_documents(docs), term_index.FastTermIndex)
    assert isinstance(index_documents(docs, "whitespace"), term_index.FastTermIndex)
    assert_same(docs, "ferries ærø İzmir", "words")


def test_rank_documents_breaks_ties_by_lower_index():
    rng = np.random.default_rng(0)
    for _ in range(50):
        scores = rng.integers(0, 4, size=rng.integers(1, 20)).astype(float)
        expected = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        assert rank_documents(scores) == expected
    assert rank_documents([0.0, -0.0, 0.0]) == [0, 1, 2]


def test_oversized_record_uses_the_exact_path(monkeypatch):
    monkeypatch.setattr(term_index, "MAX_FAST_CHARS", 10)
    docs = ["a long enough document", "another one", "a third document"]
    assert isinstance(index_documents(docs), term_index.ExactTermIndex)
    assert_same(docs, "document one", "words")
