"""The rerank server (cross_encoder/4_serve.py) as a real subprocess, driven by a real HTTP client.

Oracles: `Reranker.score` on the same inputs in this process (scores), the RWKV World TRIE
tokenizer (token counts, row limits), and the request itself (order, top_n, documents).
Server A serves the API and error tests; server B (one document per model call, a queue of 2)
keeps requests in flight long enough to fill its queue and to be stopped with SIGTERM.
"""
from __future__ import annotations

import asyncio
import math
import random
import time

import httpx
import numpy as np
import pytest
from eval_helpers import CLS, PAD, SEP, shared_assets
from serve_helpers import ServerProcess

from cross_encoder.serving.reranker import Reranker
from long_ctx.world_tokenizer import trie_tokenizer

MAX_LENGTH = 48  # the adapter's rows (shared_assets)
A_FLAGS = ("--max_docs_per_request", "50", "--max_request_bytes", "64KB", "--max_batch_docs", "16",
           "--batch_wait_ms", "5", "--served_model_name", "tiny-test")
B_FLAGS = ("--max_queue", "2", "--max_batch_docs", "1", "--batch_wait_ms", "0")
QUERY = "who designed the Eiffel Tower?"
DOCS = ["The Eiffel Tower was designed by Gustave Eiffel's company.", "Paris is the capital of France.", "",
        "東京タワー 🗼 naïve café", "short", "The tower was completed in 1889."]
LONG_DOC = "A much longer passage about towers and bridges " * 12  # > MAX_LENGTH tokens
JSON = {"content-type": "application/json"}
WORDS = "tower bridge river paris iron built designed engineer city france steel year old tall".split()


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def tokens_read(query: str, docs: list[str]) -> int:
    """Query + document tokens per row as the model reads them: a row holds at most
    MAX_LENGTH tokens, two of them SEP and CLS."""
    tok = trie_tokenizer()
    q = len(tok.encode(query))
    return sum(min(q + len(tok.encode(d)), MAX_LENGTH - 2) for d in docs)


@pytest.fixture(scope="module")
def assets():
    # Called exactly as the evaluation tests call it, so a suite run builds the adapter once.
    return shared_assets()


@pytest.fixture(scope="module")
def reranker(assets):
    return Reranker.from_pretrained(*assets, device="cpu")


@pytest.fixture(scope="module")
def servers(assets):
    # Both start at once: most of a start is importing peft, and the two overlap.
    procs = {"a": ServerProcess(*assets, *A_FLAGS), "b": ServerProcess(*assets, *B_FLAGS)}
    try:
        for p in procs.values():
            p.wait_ready()
        yield procs
    finally:
        for p in procs.values():
            p.close()


@pytest.fixture(scope="module")
def server(servers):
    return servers["a"]


def check_tei(body: list[dict], docs: list[str], expected: list[float], raw: bool, text: bool) -> None:
    assert sorted(r["index"] for r in body) == list(range(len(docs)))
    scores = [r["score"] for r in body]
    assert scores == sorted(scores, reverse=True)  # best first
    for r in body:
        want = expected[r["index"]] if raw else sigmoid(expected[r["index"]])
        assert r["score"] == pytest.approx(want, abs=1e-5)
        assert ("text" in r) == text and (not text or r["text"] == docs[r["index"]])


def test_health_and_info(server, assets):
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    if server.early_health.status_code == 503:  # it answered while the model was loading
        assert server.early_health.json() == {"status": "loading"}
        assert server.early_health.headers["retry-after"] == "1"
        assert server.early_rerank.status_code in (200, 503)
        if server.early_rerank.status_code == 503:
            assert server.early_rerank.json()["error_type"] == "unavailable"
    info = httpx.get(f"{server.url}/info").json()
    assert info["model_file"] == str(assets[0]) and info["adapter"] == str(assets[1])
    assert info["special_ids"] == {"sep": SEP, "cls": CLS, "pad": PAD}
    assert info["max_length"] == MAX_LENGTH and info["row_format"] == "question [SEP] document [CLS]"
    assert (info["device"], info["precision"], info["status"], info["model_id"]) == ("cpu", "fp32", "ready", "tiny-test")
    assert info["version"] and info["max_client_batch_size"] == 50


@pytest.mark.parametrize("raw, text", [(False, False), (True, True)])
def test_tei_rerank_scores_equal_reranker(server, reranker, raw, text):
    r = httpx.post(f"{server.url}/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": raw, "return_text": text})
    assert r.status_code == 200, r.text
    check_tei(r.json(), DOCS, reranker.score(QUERY, DOCS), raw, text)


def test_tei_truncate(server, reranker):
    docs = ["short one", LONG_DOC, "another", LONG_DOC + " and more"]
    r = httpx.post(f"{server.url}/rerank", json={"query": QUERY, "texts": docs})
    assert r.status_code == 413
    # TEI's behaviour: the too-long document is named by its index.
    assert r.json()["error_type"] == "payload_too_large" and "texts[1] is too long" in r.json()["error"]
    r = httpx.post(f"{server.url}/rerank", json={"query": QUERY, "texts": docs, "truncate": True, "raw_scores": True})
    assert r.status_code == 200  # cut as in training, which is what Reranker.score does
    check_tei(r.json(), docs, reranker.score(QUERY, docs), raw=True, text=False)
    r = httpx.post(f"{server.url}/rerank", json={"query": LONG_DOC, "texts": ["x"]})
    assert r.status_code == 413 and r.json()["error"].startswith("query is")


def test_cohere_rerank(server, reranker):
    docs = [DOCS[0], {"text": DOCS[1]}, LONG_DOC, {"text": DOCS[3], "title": "ignored"}, DOCS[4]]
    texts = [d if isinstance(d, str) else d["text"] for d in docs]
    expected = reranker.score(QUERY, texts)
    best = sorted(range(len(texts)), key=lambda i: -expected[i])
    ids = set()
    for top_n, ret in [(None, False), (3, True), (99, False)]:
        body = {"model": "whatever-the-client-says", "query": QUERY, "documents": docs, "return_documents": ret}
        if top_n:
            body["top_n"] = top_n
        r = httpx.post(f"{server.url}/v1/rerank", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["model"] == "tiny-test" and isinstance(out["id"], str)
        ids.add(out["id"])
        # A long document is cut, never refused (Cohere's behaviour); usage counts what is read.
        assert out["usage"] == {"total_tokens": tokens_read(QUERY, texts)}
        res = out["results"]
        assert [x["index"] for x in res] == best[:top_n]
        for x in res:
            assert x["relevance_score"] == pytest.approx(sigmoid(expected[x["index"]]), abs=1e-5)
            assert x.get("document") == ({"text": texts[x["index"]]} if ret else None)
    assert len(ids) == 3
    # Cohere's v2 client posts the same body to /v2/rerank.
    v2 = httpx.post(f"{server.url}/v2/rerank", json={"model": "m", "query": QUERY, "documents": texts, "top_n": 2})
    assert [x["index"] for x in v2.json()["results"]] == best[:2]


ERROR_CASES = [
    # (path, request kwargs, status, error_type, text the error must contain)
    ("/rerank", {"content": b'{"query": "q", "texts": [', "headers": JSON}, 422, "validation", "not valid JSON"),
    ("/rerank", {"json": {"query": 3, "texts": ["a"]}}, 422, "validation", "query:"),
    ("/rerank", {"json": {"query": "q", "texts": ["a", 7]}}, 422, "validation", "texts[1]:"),
    ("/rerank", {"json": {"query": "q", "texts": ["a"], "truncate": "yes"}}, 422, "validation", "truncate:"),
    ("/rerank", {"json": {"query": "q"}}, 422, "validation", "texts: Field required"),
    ("/rerank", {"json": ["q", "a"]}, 422, "validation", "body:"),
    ("/rerank", {"content": b"query=q", "headers": {"content-type": "application/x-www-form-urlencoded"}}, 422,
     "validation", "Content-Type: application/json"),
    ("/rerank", {"content": b'{"query": "q", "texts": []}'}, 422, "validation", "(got none)"),
    ("/v1/rerank", {"json": {"query": "q", "documents": [{"title": "t"}]}}, 422, "validation", "documents[0]:"),
    ("/v1/rerank", {"json": {"query": "q", "documents": ["a"], "top_n": 0}}, 422, "validation", "top_n:"),
    ("/v1/rerank", {"json": {"query": "q", "documents": ["a"], "return_documents": 1}}, 422, "validation",
     "return_documents:"),
    ("/rerank", {"json": {"query": "q", "texts": ["a"] * 51}}, 413, "payload_too_large", "at most 50"),
    ("/v1/rerank", {"json": {"query": "q", "documents": ["a"] * 51}}, 413, "payload_too_large", "at most 50"),
    ("/rerank", {"json": {"query": "q", "texts": ["a" * 70_000], "truncate": True}}, 413, "payload_too_large",
     "at most 64,000"),
    # A streamed body has no Content-Length: it is counted while it is read.
    ("/rerank", {"content": iter([b'{"query": "q", "texts": ["', b"a" * 40_000, b"a" * 40_000, b'"]}']),
                 "headers": JSON}, 413,
     "payload_too_large", "streams more bytes"),
    ("/nope", {"json": {}}, 404, "not_found", "Not Found"),
]


@pytest.mark.parametrize("path, kwargs, status, error_type, text", ERROR_CASES,
                         ids=[f"{c[2]}-{c[4][:24]}" for c in ERROR_CASES])
def test_bad_input_is_a_json_error(server, path, kwargs, status, error_type, text):
    r = httpx.post(f"{server.url}{path}", **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error_type"] == error_type and text in body["error"], body
    assert "Traceback" not in r.text
    if status == 422 and "JSON" not in text:
        assert body["detail"] and all(d["loc"][0] == "body" for d in body["detail"])


def test_edges_that_are_not_errors(server, reranker):
    assert httpx.post(f"{server.url}/rerank", json={"query": "q", "texts": []}).json() == []
    r = httpx.post(f"{server.url}/v1/rerank", json={"query": "q", "documents": []}).json()
    assert r["results"] == [] and r["usage"] == {"total_tokens": 0}
    # Just under the body limit, with unknown fields: accepted, and scored like any other request.
    doc = "tower " * 9_000
    body = {"query": "q", "texts": [doc], "truncate": True, "raw_scores": True, "extra": {"x": 1}}
    r = httpx.post(f"{server.url}/rerank", json=body)
    assert r.status_code == 200 and len(r.request.content) < 64_000
    assert r.json()[0]["score"] == pytest.approx(reranker.score("q", [doc])[0], abs=1e-5)
    # Nothing above stopped the server.
    assert httpx.get(f"{server.url}/health").status_code == 200 and server.alive()


def test_concurrent_clients_get_their_own_scores(server, reranker):
    rng = random.Random(0)
    pools = []
    for _ in range(24):
        q = " ".join(rng.choices(WORDS, k=rng.randint(1, 6)))
        docs = [" ".join(rng.choices(WORDS, k=rng.randint(0, 60))) for _ in range(rng.randint(1, 8))]
        pools.append((q, docs, reranker.score(q, docs)))
    before = httpx.get(f"{server.url}/info").json()["scored"]
    failures = []

    async def client(k: int) -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            for j in range(20):
                q, docs, expected = pools[(k * 7 + j) % len(pools)]
                if (k + j) % 2:
                    r = await c.post("/rerank", json={"query": q, "texts": docs, "truncate": True, "raw_scores": True})
                    got = {x["index"]: x["score"] for x in r.json()}
                else:
                    r = await c.post("/v1/rerank", json={"query": q, "documents": docs})
                    got = {x["index"]: math.log(x["relevance_score"] / (1 - x["relevance_score"])) for x in r.json()["results"]}
                if r.status_code != 200 or not np.allclose([got[i] for i in range(len(docs))], expected, atol=1e-4):
                    failures.append((k, j, r.status_code))

    async def run() -> None:
        await asyncio.gather(*(client(k) for k in range(16)))

    asyncio.run(run())
    assert failures == []
    after = httpx.get(f"{server.url}/info").json()["scored"]
    assert after["requests"] - before["requests"] == 16 * 20
    # Documents of different requests shared model calls.
    assert after["batches"] - before["batches"] < 16 * 20


def slow_pool(seed: int) -> tuple[str, list[str]]:
    rng = random.Random(seed)  # 100 one-document model calls on server B: ~0.5 s of work
    return "tower " * 3, [" ".join(rng.choices(WORDS, k=rng.randint(1, 12))) for _ in range(100)]


async def _post(url: str, query: str, docs: list[str]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=120) as c:
        return await c.post(f"{url}/rerank", json={"query": query, "texts": docs, "raw_scores": True})


async def _in_flight(url: str, pools) -> list[asyncio.Task]:
    """Post the pools concurrently; return once the server holds all of them."""
    slow = [asyncio.create_task(_post(url, *p)) for p in pools]
    async with httpx.AsyncClient() as c:
        for _ in range(200):
            if (await c.get(f"{url}/info")).json()["in_flight"] >= len(pools):
                return slow
            await asyncio.sleep(0.02)
    raise AssertionError(f"never {len(pools)} requests in flight")


def _check_raw(responses: list[httpx.Response], pools, reranker) -> None:
    for r, (q, docs) in zip(responses, pools, strict=True):
        assert r.status_code == 200, r.text
        got = {x["index"]: x["score"] for x in r.json()}
        np.testing.assert_allclose([got[i] for i in range(len(docs))], reranker.score(q, docs), atol=1e-5)


def test_queue_full_is_503_with_retry_after(servers, reranker):
    b = servers["b"]
    pools = [slow_pool(1), slow_pool(2)]

    async def run():
        slow = await _in_flight(b.url, pools)
        refused = await _post(b.url, "q", ["d"])
        return refused, await asyncio.gather(*slow)

    refused, done = asyncio.run(run())
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error_type"] == "overloaded"
    _check_raw(done, pools, reranker)  # the accepted ones are unharmed


def test_sigterm_answers_in_flight_requests_and_exits_0(servers, reranker):
    b = servers["b"]
    pools = [slow_pool(3), slow_pool(4)]

    async def run():
        slow = await _in_flight(b.url, pools)
        b.terminate()
        # It stops accepting connections while the accepted requests are still being scored.
        t0 = time.monotonic()
        while time.monotonic() - t0 < 5:
            try:
                async with httpx.AsyncClient() as c:
                    await c.get(f"{b.url}/health")
            # Refused, or (under load) accepted by the closing socket's backlog and then dropped.
            except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("still accepting connections 5 s after SIGTERM")
        pending = sum(not t.done() for t in slow)
        return pending, await asyncio.gather(*slow)

    pending, done = asyncio.run(run())
    assert pending >= 1  # the check above really happened with requests in flight
    _check_raw(done, pools, reranker)
    assert b.proc.wait(timeout=30) == 0, b.output()
    assert "stopped:" in b.output()
