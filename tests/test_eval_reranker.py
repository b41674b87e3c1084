"""Reranker: prefix-state reuse == per-pair full rows == an independent row-by-row oracle."""
import numpy as np
import pytest
import torch
from eval_helpers import CLS, PAD, SEP, shared_assets

from cross_encoder.modeling import load_cross_encoder
from cross_encoder.serving.reranker import Reranker
from long_ctx.world_tokenizer import trie_tokenizer


@pytest.fixture(scope="module")
def assets():
    return shared_assets()


@pytest.fixture(scope="module")
def reranker(assets):
    return Reranker.from_pretrained(*assets, device="cpu", batch_size=3)


@pytest.fixture(scope="module")
def oracle_model(assets):
    # The unmerged peft model with the step-by-step WKV recurrence: no LoRA merge, no chunked kernel.
    model, _ = load_cross_encoder(*assets, device="cpu", merge=False)
    model.rwkv.wkv_impl = "reference"
    return model


def oracle_scores(model, q, docs, max_length):
    """Each row built by hand (the stage-2 contract, plus docs/reranking.md's rule: a query keeps
    at most half of max_length - 2 tokens) and run alone through the full model."""
    out = []
    for d in docs:
        qq, dd = list(q)[:(max_length - 2) // 2], list(d)
        if len(qq) + len(dd) + 2 > max_length:
            dd = dd[:max_length - 2 - len(qq)]
        row = qq + [SEP] + dd + [CLS]
        with torch.no_grad():
            s = model(input_ids=torch.tensor([row]), lengths=torch.tensor([len(row)]))
        out.append(float(s[0]))
    return np.array(out)


QUERY = "who designed the Eiffel Tower (Paris)?"
DOCS = [
    "The Eiffel Tower was designed by the engineering company of Gustave Eiffel.",
    "Paris is the capital of France.",
    "",
    "Document [3] Question: what? Answer: not this one. 東京タワー 🗼 naïve café",
    "A much longer passage " * 12,
    "short",
    "The tower was completed in 1889 for the World's Fair.",
]


def test_reuse_equals_per_pair_and_oracle(reranker, oracle_model):
    q, docs = reranker.encode(QUERY, DOCS)
    # Ids come from the World tokenizer; the TRIE reference gives the same ones.
    assert docs == [trie_tokenizer().encode(d) for d in DOCS]
    reuse = reranker.score_ids(q, docs)
    per_pair = reranker.score_ids_per_pair(q, docs)
    oracle = oracle_scores(oracle_model, q, docs, reranker.max_length)
    np.testing.assert_allclose(reuse, oracle, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(per_pair, oracle, atol=2e-5, rtol=1e-5)
    assert reranker.score(QUERY, DOCS) == pytest.approx(reuse.tolist(), abs=1e-9)
    assert np.ptp(reuse) > 1e-3  # documents are told apart at all


def test_adapter_is_applied(reranker, oracle_model):
    # Without the adapter (LoRA off, the untrained head) scores differ clearly, so the equality
    # above really checks that the merged adapter is the one peft applies.
    q, docs = reranker.encode(QUERY, DOCS[:4])
    with oracle_model.disable_adapter():
        bare = oracle_scores(oracle_model, q, docs, reranker.max_length)
    assert np.abs(bare - reranker.score_ids(q, docs)).max() > 1e-2


@pytest.mark.filterwarnings("ignore::cross_encoder.serving.reranker.QueryCutWarning")
def test_truncation_matches_training_rows(assets, oracle_model):
    # max_length 20: long documents lose their tail, a long question keeps its first 9 tokens.
    short = Reranker.from_pretrained(*assets, device="cpu", max_length=20, batch_size=2)
    for query in (QUERY, "word " * 40):
        q, docs = short.encode(query, DOCS)
        reuse = short.score_ids(q, docs)
        np.testing.assert_allclose(reuse, oracle_scores(oracle_model, q, docs, 20), atol=2e-5, rtol=1e-5)
        np.testing.assert_allclose(short.score_ids_per_pair(q, docs, batch_size=4), reuse, atol=2e-5, rtol=1e-5)


def test_batching_does_not_change_scores(assets, reranker):
    q, docs = reranker.encode(QUERY, DOCS)
    ref = reranker.score_ids(q, docs)
    for batch_size, max_tokens in ((1, 10_000), (64, 10_000), (8, 1)):
        rr = Reranker(reranker.model, reranker.ce_config, batch_size=batch_size, max_batch_tokens=max_tokens)
        np.testing.assert_allclose(rr.score_ids(q, docs), ref, atol=2e-5, rtol=1e-5)


def test_pools_batched_together_equal_pools_alone(reranker, oracle_model):
    pools = [(QUERY, DOCS), ("second question", []), ("a third, longer question " * 3, DOCS[:3]), ("", ["x"])]
    items = [reranker.encode(q, d) for q, d in pools]
    for batch_size in (2, 32):
        rr = Reranker(reranker.model, reranker.ce_config, batch_size=batch_size)
        together = rr.score_ids_many(items)
        assert [len(t) for t in together] == [len(d) for _, d in pools]
        for (q, docs), got in zip(items, together):
            np.testing.assert_allclose(got, oracle_scores(oracle_model, q, docs, rr.max_length), atol=2e-5, rtol=1e-5)
    assert reranker.score_many(pools)[2] == pytest.approx(reranker.score(*pools[2]), abs=2e-5)


def test_batches_respect_limits(reranker):
    rr = Reranker(reranker.model, reranker.ce_config, batch_size=3, max_batch_tokens=20)
    lengths = [5, 9, 1, 9, 4, 2, 30]
    batches = rr._batches(lengths)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 20


def test_rank_orders_by_score_ties_to_lower_index(reranker):
    ranked = reranker.rank(QUERY, DOCS)
    scores = reranker.score(QUERY, DOCS)
    assert sorted(i for i, _ in ranked) == list(range(len(DOCS)))
    for (i, s), (j, t) in zip(ranked, ranked[1:]):
        assert s > t or (s == t and i < j)
    assert [s for _, s in ranked] == sorted(scores, reverse=True)
    # Identical documents score identically; the lower index comes first.
    dup = reranker.rank(QUERY, ["same text", "other", "same text"])
    pos = [i for i, _ in dup]
    assert pos.index(0) < pos.index(2)


def test_empty_inputs(reranker):
    assert reranker.score(QUERY, []) == []
    assert reranker.rank(QUERY, []) == []
    assert len(reranker.score("", ["a", ""])) == 2


def test_special_ids_come_from_the_adapter_config(reranker):
    cfg = reranker.ce_config
    assert (reranker.sep, reranker.cls, reranker.pad) == (cfg["sep_token_id"], cfg["cls_token_id"], cfg["pad_token_id"])
    assert (reranker.sep, reranker.cls, reranker.pad) == (SEP, CLS, PAD)
    assert reranker.max_length == cfg["max_length"]
    with pytest.raises(ValueError, match="lacks"):
        Reranker(reranker.model, {"max_length": 10})
