import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stage0_helpers import ref_negatives

from long_ctx.stage0 import negatives
from long_ctx.stage0.bm25 import index_documents
from long_ctx.stage0.negatives import (documents_containing, identical_to_positive, negative_candidates,
                                      select_negatives)
from long_ctx.stage0.nq_format import SkipRecord

DOCS = ["Gold text", "about paris", "PARIS again", "nothing", "other", "Paris", "more"]


@pytest.mark.parametrize("strategy", ["least", "hardest"])
@pytest.mark.parametrize("k", [1, 2, 10])
@pytest.mark.parametrize("filter_docs", [True, False])
def test_least_and_hardest_match_brute_force_with_ties(strategy, k, filter_docs):
    rng = np.random.default_rng(3)
    for _ in range(40):
        scores = rng.integers(0, 3, len(DOCS)).astype(float)  # many exact ties
        gold = int(rng.integers(len(DOCS)))
        cands = negative_candidates(DOCS, gold, "Paris", filter_docs)
        got = select_negatives(scores, cands, strategy, k)
        assert got == ref_negatives(scores, DOCS, gold, "Paris", strategy, k, filter_docs)


def test_answer_filter_is_case_insensitive_and_skips_empty_answers():
    assert negative_candidates(DOCS, 0, "paris").tolist() == [3, 4, 6]
    assert negative_candidates(DOCS, 0, "").tolist() == [1, 2, 3, 4, 5, 6]
    assert negative_candidates(DOCS, 0, "paris", filter_answer_docs=False).tolist() == [1, 2, 3, 4, 5, 6]


def test_random_is_seeded_by_seed_and_line_number():
    scores = np.zeros(50)
    cands = np.arange(1, 50)
    a = select_negatives(scores, cands, "random", 5, seed=1, line_number=7)
    assert a == select_negatives(scores, cands, "random", 5, seed=1, line_number=7)
    assert len(set(a)) == 5 and set(a) <= set(cands.tolist())
    draws = {tuple(select_negatives(scores, cands, "random", 5, seed=s, line_number=n))
             for s in range(3) for n in range(3)}
    assert len(draws) == 9
    # Uniform over candidates: every candidate is drawn first about equally often.
    firsts = [select_negatives(scores, cands, "random", 1, seed=0, line_number=n)[0] for n in range(4900)]
    counts = np.bincount(firsts, minlength=50)[1:]
    assert counts.min() > 50 and counts.max() < 150


def test_no_candidate_is_a_named_skip():
    with pytest.raises(SkipRecord) as err:
        select_negatives(np.zeros(2), negative_candidates(["gold", "has PARIS"], 0, "paris"))
    assert err.value.reason == "no_negative_candidate"


_text = st.lists(st.sampled_from(list("abAB1 .\n\t\x1c") + ["é", "É", "İ", "Σ", "ς", "K", "ß", "😀", "i\u0307", "\xa0"]),
                 max_size=12).map("".join)


@settings(max_examples=400, deadline=None)
@given(docs=st.lists(_text, max_size=5), answer=_text)
def test_documents_containing_equals_python(docs, answer):
    needle = answer.lower()
    if not needle:
        return
    expected = [needle in d.lower() for d in docs]
    assert documents_containing(docs, needle).tolist() == expected
    # The general search goes block by block; tiny blocks put matches across block edges.
    block = negatives.SEARCH_BLOCK
    try:
        negatives.SEARCH_BLOCK = 3
        assert documents_containing(docs, needle).tolist() == expected
    finally:
        negatives.SEARCH_BLOCK = block


def test_documents_containing_ignores_byte_matches_across_characters():
    # The general search looks for the needle's code units as bytes: in UTF-16 "\u0131\u0107" is
    # 31 01 07 01, holding "\u0701" (01 07) at an odd offset; in UTF-32 "\U00019500\u4e00" is
    # 00 95 01 00 00 4e 00 00, holding "\u0195" (95 01 00 00) at offset 1.
    for docs, needle in [(["\u0131\u0107", "x"], "\u0701"), (["\U00019500\u4e00", "y"], "\u0195")]:
        expected = [needle in d.lower() for d in docs]
        assert expected == [False, False]
        assert documents_containing(docs, needle).tolist() == expected
        assert documents_containing(docs + [needle], needle).tolist() == expected + [True]


@settings(max_examples=300, deadline=None)
@given(a=_text, b=_text)
def test_same_words_is_split_equality(a, b):
    assert negatives.same_words(a, b) == (a.split() == b.split())
    assert negatives.same_words(a, " \n".join(a.split()) + "\t")


def test_only_listed_characters_lowercase_to_ascii():
    # The ASCII fast path of the answer filter relies on this list being complete.
    from long_ctx.stage0.negatives import TO_ASCII_LOWER

    found = [chr(c) for c in range(128, 0x110000) if any(ord(x) < 128 for x in chr(c).lower())]
    assert sorted(found) == sorted(TO_ASCII_LOWER)


DUP_DOCS = ["Gold  text here", "Gold text here", "gold text here", "Gold\u00a0text\nhere ", "Gold text", "", " ",
            "Gold text here.", "Gold  text here"]


@pytest.mark.parametrize("tokenizer", ["words", "whitespace"])
def test_documents_identical_to_the_positive_are_never_candidates(tokenizer):
    for gold in range(len(DUP_DOCS)):
        expected = [i for i, d in enumerate(DUP_DOCS) if i != gold and d.split() == DUP_DOCS[gold].split()]
        doc_len = index_documents(DUP_DOCS, tokenizer).doc_len
        for same in (identical_to_positive(DUP_DOCS, gold), identical_to_positive(DUP_DOCS, gold, doc_len)):
            assert np.flatnonzero(same).tolist() == expected
        cands = negative_candidates(DUP_DOCS, gold, "", filter_answer_docs=False)
        assert cands.tolist() == [i for i in range(len(DUP_DOCS)) if i != gold and i not in expected]
        assert cands.tolist() == ref_negatives(np.zeros(len(DUP_DOCS)), DUP_DOCS, gold, "", "least", 99)
