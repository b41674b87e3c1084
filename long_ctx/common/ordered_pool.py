"""Ordered, memory-bounded parallel map over an iterator, that fails fast when a worker dies.

`multiprocessing.Pool.imap` keeps order but its feeder thread drains the input iterator as fast as
it can, so on a big file the whole input ends up queued in memory; and a `Pool` whose worker is
killed (the out-of-memory killer's SIGKILL) waits forever for the lost task. Here at most
`max_in_flight` tasks (and at most `max_weight` of their summed `weight`, e.g. input bytes) are
outstanding, results come back in submission order, and a dead worker ends the map within
moments with `WorkerDied` (a `concurrent.futures` pool notices a vanished process). Workers
ignore SIGINT: Ctrl-C reaches the whole process group, and only the main process should react
(once, with one line) while the pool is shut down.
"""
from __future__ import annotations

import collections
import multiprocessing as mp
import signal
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterable, Iterator, TypeVar

from long_ctx.common.cli_errors import WorkerDied

T = TypeVar("T")
R = TypeVar("R")


def _start_worker(initializer: Callable[..., None] | None, initargs: tuple) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer(*initargs)


def _result(future: Future) -> R:
    try:
        return future.result()
    except BrokenProcessPool as exc:
        raise WorkerDied(
            "a worker process ended abruptly (killed, e.g. by the out-of-memory killer, or crashed); "
            "the run stopped and its output was not written — free memory or use fewer workers, then run again"
        ) from exc


def ordered_imap(
    fn: Callable[[T], R],
    items: Iterable[T],
    num_proc: int,
    max_in_flight: int | None = None,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
    preload: list[str] | None = None,
    weight: Callable[[T], int] | None = None,
    max_weight: int | None = None,
) -> Iterator[R]:
    """Yield fn(item) for every item, in order, using `num_proc` processes (1: in this process).

    `fn` and `initializer` must be importable module-level functions. Workers are never forked
    from this process (its Arrow/Rust thread pools may be running, and a forked copy can hang):
    they are forked from a fresh fork server that first imports the `preload` modules, so
    expensive set-up done there is paid once and shared. Call this under
    `if __name__ == "__main__":` in scripts, as multiprocessing requires.
    """
    if num_proc < 1:
        raise ValueError(f"num_proc must be >= 1, got {num_proc}")
    if num_proc == 1:
        if initializer is not None:
            initializer(*initargs)
        for item in items:
            yield fn(item)
        return
    max_in_flight = max_in_flight or 2 * num_proc + 2
    if "forkserver" not in mp.get_all_start_methods():  # Windows
        ctx = mp.get_context("spawn")
    else:
        ctx = mp.get_context("forkserver")
    if preload and ctx.get_start_method() == "forkserver":
        # Only takes effect if this process has not started its fork server yet; workers then
        # still work, the initializer just repeats the set-up in each of them.
        ctx.set_forkserver_preload(preload)
    pool = ProcessPoolExecutor(num_proc, mp_context=ctx, initializer=_start_worker,
                               initargs=(initializer, initargs))
    pending: collections.deque[tuple[Future, int]] = collections.deque()
    in_flight = 0
    try:
        for item in items:
            w = weight(item) if weight is not None else 0
            pending.append((pool.submit(fn, item), w))
            in_flight += w
            while pending and (len(pending) >= max_in_flight
                               or (max_weight is not None and in_flight > max_weight)):
                future, w = pending.popleft()
                in_flight -= w
                yield _result(future)
        while pending:
            yield _result(pending.popleft()[0])
    finally:
        # Also on an exception or Ctrl-C in the consumer: drop queued tasks, let running ones end.
        pool.shutdown(wait=True, cancel_futures=True)


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of `size` consecutive items (the last one shorter)."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
