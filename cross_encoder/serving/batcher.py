"""Cross-request batching: a bounded queue of scoring jobs feeding one model worker thread.

The event loop only ever takes a short lock to enqueue a job and awaits an asyncio future; the
worker thread loads the model, then repeatedly gathers documents from the head of the queue (the
documents of several requests, or a slice of one big request) until it holds `max_batch_docs` or
`batch_wait_ms` have passed since the oldest gathered job arrived, and scores them in one
`Reranker.score_ids_many` call. Each gathered slice is its own pool there, so every document
still starts from its own question's prefix state: a score does not depend on what it was
batched with, beyond float rounding.

Jobs are served first come, first served; a request bigger than a batch is scored in slices and
the last slice shares its batch with the next requests. A slice only ever ends where the
reranker's `windows` end (every document for a passage adapter; for a pool adapter, where its
scoring windows end), so a pool adapter's documents keep the window neighbours they would have
had in one `score_ids_many` call of the whole request; a window larger than `max_batch_docs`
is a batch of its own.
"""
from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

log = logging.getLogger("cross_encoder.serve")


class QueueFull(RuntimeError):
    """`max_queue` requests are already accepted and unanswered."""


class NotReady(RuntimeError):
    """The model is still loading (or failed to load)."""


@dataclass(eq=False)
class _Job:
    question: Sequence[int]
    docs: Sequence[Sequence[int]]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)
    scores: np.ndarray = field(init=False)
    next: int = 0  # first document not yet handed to the model
    left: int = field(init=False)  # documents not yet scored
    ends: list[int] | None = None  # where slices may end (the reranker's window ends); None: anywhere

    def __post_init__(self) -> None:
        self.scores = np.empty(len(self.docs))
        self.left = len(self.docs)


def _resolve(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # the awaiting request was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Batcher:
    """Owns the model: `load()` runs in the worker thread, then jobs are scored there in batches."""

    def __init__(self, load: Callable[[], Any], max_batch_docs: int, batch_wait_ms: float, max_queue: int,
                 torch_threads: int, on_fatal: Callable[[], None] | None = None) -> None:
        self._load = load
        self.max_batch_docs = max_batch_docs
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.max_queue = max_queue
        self.torch_threads = torch_threads
        self.on_fatal = on_fatal
        self.reranker: Any = None
        self.load_error: BaseException | None = None
        self.ready = threading.Event()
        self._cond = threading.Condition()
        self._queue: collections.deque[_Job] = collections.deque()
        self._admitted = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="model-worker", daemon=True)
        self.stats = {"batches": 0, "documents": 0, "requests": 0, "busy_s": 0.0}  # busy_s: in model calls

    # ------------------------------------------------------------------ event-loop side
    def start(self) -> None:
        self._thread.start()

    def acquire(self) -> None:
        """Take one of `max_queue` slots for a request (NotReady / QueueFull when it cannot be
        served now); give it back with `release()` once the request is answered."""
        if not self.ready.is_set():
            raise NotReady("the model is still loading")
        with self._cond:
            if self._admitted >= self.max_queue:
                raise QueueFull(f"{self._admitted} requests are queued (--max_queue {self.max_queue})")
            self._admitted += 1

    def release(self) -> None:
        with self._cond:
            self._admitted -= 1

    def submit(self, question: Sequence[int], docs: Sequence[Sequence[int]]) -> asyncio.Future:
        """Queue one pool; the future resolves to its float64 [n_docs] scores in input order.
        Call from the event loop, between `acquire()` and `release()`."""
        loop = asyncio.get_running_loop()
        job = _Job(question, docs, loop, loop.create_future())
        if not docs:
            job.future.set_result(job.scores)
            return job.future
        with self._cond:
            self._queue.append(job)
            self._cond.notify()
        return job.future

    def in_flight(self) -> int:
        with self._cond:
            return self._admitted

    def stop(self) -> None:
        """Score what is queued, then end the worker (blocking: call from a thread)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join()

    # ------------------------------------------------------------------ worker side
    def _run(self) -> None:
        try:
            import torch

            torch.set_num_threads(self.torch_threads)
            self.reranker = self._load()
        except BaseException as exc:  # reported by the server's main, which then exits
            self.load_error = exc
            log.error("loading the model failed: %s", exc)
            if self.on_fatal is not None:
                self.on_fatal()
            return
        self.ready.set()
        log.info("model loaded; ready")
        while True:
            batch = self._gather()
            if batch is None:
                return
            self._score(batch)

    def _gather(self) -> list[tuple[_Job, int, int]] | None:
        """(job, first doc, end doc) slices totalling at most max_batch_docs; None once stopping
        with nothing queued."""
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            deadline = self._queue[0].enqueued + self.batch_wait_s
            batch: list[tuple[_Job, int, int]] = []
            n = 0
            while True:
                while self._queue and n < self.max_batch_docs:
                    job = self._queue[0]
                    end = self._slice_end(job, self.max_batch_docs - n, first=not batch)
                    if end is None:  # its next window does not fit beside what is gathered
                        return batch
                    batch.append((job, job.next, end))
                    n += end - job.next
                    job.next = end
                    if end == len(job.docs):
                        self._queue.popleft()
                left = deadline - time.monotonic()
                if n >= self.max_batch_docs or left <= 0 or self._stopping:
                    return batch
                self._cond.wait(left)

    def _slice_end(self, job: _Job, room: int, first: bool) -> int | None:
        """Where the slice of `job` taken now ends: as far as `room` documents allow, at a window
        end; the first slice of a batch takes at least one whole window; None: nothing fits."""
        if job.ends is None and job.next == 0:
            windows = getattr(self.reranker, "windows", None)
            if windows is not None:
                job.ends = [b for _, b in windows(job.question, job.docs)]
        limit = min(len(job.docs), job.next + room)
        if job.ends is None:
            return limit
        j = bisect.bisect_right(job.ends, limit) - 1
        if j >= 0 and job.ends[j] > job.next:
            return job.ends[j]
        return job.ends[bisect.bisect_right(job.ends, job.next)] if first else None

    def _score(self, batch: list[tuple[_Job, int, int]]) -> None:
        start = time.perf_counter()
        try:
            results = self.reranker.score_ids_many([(job.question, job.docs[a:b]) for job, a, b in batch])
        except Exception as exc:  # a failed batch fails its requests, never the worker
            log.exception("scoring a batch failed")
            for job in {job for job, _, _ in batch}:
                job.left = -1
                job.loop.call_soon_threadsafe(_resolve, job.future, None, exc)
            return
        self.stats["batches"] += 1
        self.stats["busy_s"] += time.perf_counter() - start
        for (job, a, b), scores in zip(batch, results):
            self.stats["documents"] += b - a
            if job.left < 0:  # an earlier slice failed and was reported
                continue
            job.scores[a:b] = scores
            job.left -= b - a
            if job.left == 0:
                self.stats["requests"] += 1
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
                    job.loop.call_soon_threadsafe(_resolve, job.future, job.scores, None)
