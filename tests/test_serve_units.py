"""The rerank server's parts in-process: flags and configuration, and the cross-request Batcher
with a stand-in scorer whose score of a document is a fixed function of (question, document):
whatever the batching, every request must get exactly those scores, in its own order."""
from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from cross_encoder.serving.batcher import Batcher, NotReady, QueueFull
from cross_encoder.serving.serve_config import ServeConfig, parse_size


def oracle(question, doc) -> float:
    return 1000.0 * sum(question) + sum(doc) + 0.001 * len(doc)


class FakeReranker:
    def __init__(self) -> None:
        self.calls: list[list[int]] = []  # documents per pool, per call

    def score_ids_many(self, items):
        self.calls.append([len(d) for _, d in items])
        if any(-1 in doc for _, docs in items for doc in docs):
            raise RuntimeError("poisoned document")
        return [np.array([oracle(q, d) for d in docs]) for q, docs in items]


def started(fake, **kw) -> Batcher:
    args = dict(max_batch_docs=4, batch_wait_ms=50, max_queue=3, torch_threads=1) | kw
    b = Batcher(lambda: fake, **args)
    b.start()
    assert b.ready.wait(10)
    return b


def test_requests_share_batches_and_get_their_own_scores():
    fake = FakeReranker()
    b = started(fake)
    jobs = [([1], [[5], [6, 7], []]), ([2, 2], [[i] for i in range(6)]), ([3], [[9, 9]])]

    async def run():
        return await asyncio.gather(*(b.submit(q, docs) for q, docs in jobs))

    results = asyncio.run(run())
    for (q, docs), got in zip(jobs, results):
        np.testing.assert_array_equal(got, [oracle(q, d) for d in docs])
    # 10 documents, at most 4 per call; the second request is split and shares both ends.
    assert [sum(c) for c in fake.calls] == [4, 4, 2]
    assert fake.calls[0] == [3, 1] and fake.calls[2] == [1, 1]
    assert b.stats["requests"] == 3 and b.stats["documents"] == 10
    b.stop()


def test_a_failing_batch_fails_only_its_requests():
    fake = FakeReranker()
    b = started(fake, max_batch_docs=2, batch_wait_ms=0)

    async def run():
        bad = b.submit([1], [[-1], [2]])
        await asyncio.sleep(0.05)  # its own batch
        good = b.submit([1], [[3]])
        return await asyncio.gather(bad, good, return_exceptions=True)

    bad, good = asyncio.run(run())
    assert isinstance(bad, RuntimeError) and "poisoned" in str(bad)
    np.testing.assert_array_equal(good, [oracle([1], [3])])
    b.stop()


def test_queue_bound_and_loading():
    gate = threading.Event()
    b = Batcher(lambda: (gate.wait(10), FakeReranker())[1], max_batch_docs=4, batch_wait_ms=0, max_queue=2,
                torch_threads=1)
    b.start()
    with pytest.raises(NotReady):
        b.acquire()
    gate.set()
    assert b.ready.wait(10)
    b.acquire()
    b.acquire()
    with pytest.raises(QueueFull):
        b.acquire()
    b.release()
    b.acquire()  # a released slot is free again
    assert b.in_flight() == 2
    b.stop()


def test_load_failure_is_reported():
    fatal = threading.Event()

    def load():
        raise ValueError("adapter does not match the base model")

    b = Batcher(load, max_batch_docs=4, batch_wait_ms=0, max_queue=2, torch_threads=1, on_fatal=fatal.set)
    b.start()
    assert fatal.wait(10) and isinstance(b.load_error, ValueError) and not b.ready.is_set()
    b.stop()


@pytest.mark.parametrize("text, want", [("8MB", 8_000_000), ("512KiB", 524_288), ("1048576", 1_048_576),
                                        ("1.5 mb", 1_500_000), ("2g", 2_000_000_000), ("64kb", 64_000)])
def test_parse_size(text, want):
    assert parse_size(text) == want


@pytest.mark.parametrize("text", ["", "MB", "8 XB", "-1", "1e6"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


@pytest.mark.parametrize("field, value", [("max_batch_docs", 0), ("max_queue", 0), ("batch_wait_ms", -1),
                                          ("port", 70000), ("torch_threads", 0), ("max_length", 2)])
def test_config_rejects(field, value):
    with pytest.raises(ValueError, match=field):
        ServeConfig(model_file="m", adapter="a", **{field: value}).validate()


def test_mistakes_end_before_binding(tmp_path):
    # run_cli turns these into one line `error: ...` (exit 1); nothing is bound or loaded first.
    import socket

    from cross_encoder.serving.server import main
    from long_ctx.common.cli import USER_ERRORS

    model, adapter = tmp_path / "m.pth", tmp_path / "final"
    with pytest.raises(FileNotFoundError, match="--model_file"):
        main(ServeConfig(model_file=str(model), adapter=str(adapter)))
    model.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="--adapter"):
        main(ServeConfig(model_file=str(model), adapter=str(adapter)))
    adapter.mkdir()
    with socket.create_server(("127.0.0.1", 0)) as busy:
        with pytest.raises(USER_ERRORS, match="Address already in use"):
            main(ServeConfig(model_file=str(model), adapter=str(adapter), device="cpu", port=busy.getsockname()[1]))
