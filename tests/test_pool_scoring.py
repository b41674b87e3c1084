"""A pool adapter behind the same Reranker calls, the server's batcher and the evaluator: windows
of documents scored in one pass each equal an independent window-by-window oracle, slicing a
request never changes a window, and the evaluator's BM25 side equals rank_bm25."""
from __future__ import annotations

import asyncio
import re

import numpy as np
import orjson
import pytest
import torch
from eval_helpers import CLS, SEP, sample_lines, shared_pool_assets
from rank_bm25 import BM25Okapi

from cross_encoder.evaluation.evaluator import EvalConfig
from cross_encoder.evaluation.evaluator import main as evaluate
from cross_encoder.modeling import load_cross_encoder
from cross_encoder.serving.batcher import Batcher
from cross_encoder.serving.reranker import Reranker
from long_ctx.stage0.nq_format import parse_line

QUERY = "who designed the Eiffel Tower (Paris)?"
DOCS = ["The Eiffel Tower was designed by the company of Gustave Eiffel.", "Paris is the capital of France.", "",
        "A much longer passage " * 30, "short", "The tower was completed in 1889.", "東京タワー 🗼 naïve café",
        "one more", "and the last document of the pool"]


@pytest.fixture(scope="module")
def assets():
    return shared_pool_assets()


@pytest.fixture(scope="module")
def reranker(assets):
    return Reranker.from_pretrained(*assets, device="cpu", batch_size=2)


@pytest.fixture(scope="module")
def oracle_model(assets):
    model, _ = load_cross_encoder(*assets, device="cpu", merge=False)  # unmerged LoRA
    model.rwkv.wkv_impl = "reference"  # the step-by-step recurrence
    return model


def oracle_windows(q, docs, max_length, window):
    """docs/reranking.md's rule, written out: the query keeps half of max_length - 2; windows fill
    greedily up to `window` documents and max_length tokens; a document too long alone is cut."""
    q = list(q)[:(max_length - 2) // 2]
    room = max_length - len(q) - 1
    out, cur = [], []
    for i, d in enumerate(docs):
        d = list(d)[:room - 1]
        if cur and (len(cur) == window or sum(len(x) + 1 for _, x in cur) + len(d) + 1 > room):
            out.append(cur)
            cur = []
        cur.append((i, d))
    return out + [cur], q


def oracle_scores(model, q, docs, max_length, window):
    scores = np.empty(len(docs))
    windows, q = oracle_windows(q, docs, max_length, window)
    for w in windows:
        row, at = q + [SEP], []
        for _, d in w:
            row += d + [CLS]
            at.append(len(row) - 1)
        with torch.no_grad():
            h = model.rwkv.hidden(torch.tensor([row]))[0]  # [T, C]
            s = model.score_hidden(h[at])
        scores[[i for i, _ in w]] = s.double().numpy()
    return scores


def test_pool_adapter_scores_windows_in_one_pass_each(reranker, oracle_model):
    assert reranker.row_format == "pool" and reranker.pool_window == 4  # the training K
    q, docs = reranker.encode(QUERY, DOCS)
    got = reranker.score_ids(q, docs)
    np.testing.assert_allclose(got, oracle_scores(oracle_model, q, docs, reranker.max_length, 4), atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(reranker.score_ids_per_pair(q, docs), got, atol=2e-5, rtol=1e-5)
    assert reranker.windows(q, docs) == [(0, 4), (4, 8), (8, 9)]
    # Windows of as many documents as 60 tokens hold (the long one cut), batched differently.
    short = Reranker(reranker.model, reranker.ce_config, batch_size=3, max_length=60, pool_window=0)
    np.testing.assert_allclose(short.score_ids(q, docs), oracle_scores(oracle_model, q, docs, 60, 10**9),
                               atol=2e-5, rtol=1e-5)
    windows = short.windows(q, docs)
    assert windows[0][0] == 0 and windows[-1][1] == len(docs) and len(windows) >= 3
    for a, b in windows:
        ids, positions = short.window_row(q, docs[a:b])
        assert len(ids) <= 60 and [ids[p] for p in positions] == [CLS] * (b - a) and positions[-1] == len(ids) - 1
    # What the model reads: the query once per window plus every (cut) document.
    assert short.tokens_read(q, docs) == sum(len(q) + sum(len(d) for _, d in w)
                                             for w in oracle_windows(q, docs, 60, 10**9)[0])


def test_same_calls_same_outputs(reranker):
    scores = reranker.score(QUERY, DOCS)
    assert isinstance(scores, list) and len(scores) == len(DOCS)
    ranked = reranker.rank(QUERY, DOCS)
    assert [i for i, _ in ranked] == list(np.argsort(-np.array(scores), kind="stable"))
    many = reranker.score_many([("other", DOCS[:3]), (QUERY, DOCS), ("empty", [])])
    assert many[1] == pytest.approx(scores, abs=2e-5) and many[2] == []


def test_batcher_slices_a_pool_request_only_at_window_ends(reranker):
    q, docs = reranker.encode(QUERY, DOCS)
    want = reranker.score_ids(q, docs)
    calls = []
    real = reranker.score_ids_many

    def spy(items):
        calls.append([len(d) for _, d in items])
        return real(items)

    reranker.score_ids_many = spy
    try:
        b = Batcher(lambda: reranker, max_batch_docs=6, batch_wait_ms=0, max_queue=4, torch_threads=1)
        b.start()
        assert b.ready.wait(30)

        async def run():
            return await asyncio.gather(b.submit(q, docs), b.submit(q[:3], docs[:2]))

        got, small = asyncio.run(run())
        b.stop()
    finally:
        del reranker.score_ids_many
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(small, reranker.score_ids(q[:3], docs[:2]), atol=2e-5, rtol=1e-5)
    # 9 documents in windows of 4: slices 4 (room for 6, a whole window), then 4 + 1 = the rest.
    assert calls[0][0] == 4 and sum(sum(c) for c in calls) == 11


def _bm25_rank(documents, question, gold):
    tok = lambda s: [m.lower() for m in re.findall(r"\w+", s)]  # noqa: E731
    s = BM25Okapi([tok(d) for d in documents]).get_scores(tok(question))
    return 1 + int(np.sum(s > s[gold])) + int(np.sum(s[:gold] == s[gold])), s


def test_evaluator_with_a_pool_adapter(assets, reranker, tmp_path):
    lines = sample_lines(6)
    nq = tmp_path / "nq.jsonl"
    nq.write_bytes(b"\n".join(lines) + b"\n")
    cfg = EvalConfig(model_file=str(assets[0]), adapter=str(assets[1]), input_file=str(nq), max_docs=12,
                     doc_order="bm25", order_check=True, output_json=str(tmp_path / "r.json"),
                     per_question=str(tmp_path / "q.jsonl"), progress=False)
    res = evaluate(cfg, reranker=reranker)
    assert res["model"]["row_format"] == "pool" and res["model"]["pool_window"] == 4
    oc = res["order_check"]
    assert oc["n"] == res["num_questions"] >= 3 and oc["doc_order"] == "bm25" and oc["mean_abs_gold_rank_change"] >= 0
    per_q = [orjson.loads(x) for x in (tmp_path / "q.jsonl").read_bytes().splitlines()]
    assert len(per_q) == res["num_questions"]
    for pq in per_q:
        rec = parse_line(lines[pq["line_number"]])
        docs = rec.documents[:12]
        rank, bm25 = _bm25_rank(docs, rec.question, rec.gold_id - 1)
        assert pq["gold_rank"]["bm25"] == rank
        # The cross-encoder saw the documents by descending BM25 (ties to the lower number); its
        # scores come back in the pool's own order.
        order = sorted(range(len(docs)), key=lambda i: (-bm25[i], i))
        scored = reranker.score(rec.question, [docs[i] for i in order])
        back = np.empty(len(docs))
        back[order] = scored
        np.testing.assert_allclose(pq["cross_encoder_scores"], back, atol=2e-5, rtol=1e-5)
        rev = reranker.score(rec.question, [docs[i] for i in order[::-1]])
        back[order[::-1]] = rev
        g = rec.gold_id - 1
        assert pq["gold_rank_reversed_order"] == 1 + int(np.sum(back > back[g])) + int(np.sum(back[:g] == back[g]))
    assert oc["mrr@10"] == pytest.approx(res["cross_encoder"]["mrr@10"])
