"""Ordered, memory-bounded parallel map over an iterator.

`multiprocessing.Pool.imap` keeps order but its feeder thread drains the input iterator as fast as
it can, so on a big file the whole input ends up queued in memory. Here at most `max_in_flight`
tasks are outstanding; results come back in submission order.
"""
from __future__ import annotations

import collections
import multiprocessing as mp
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_imap(
    fn: Callable[[T], R],
    items: Iterable[T],
    num_proc: int,
    max_in_flight: int | None = None,
    initializer: Callable[[], None] | None = None,
    preload: list[str] | None = None,
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
            initializer()
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
    with ctx.Pool(num_proc, initializer=initializer) as pool:
        pending: collections.deque = collections.deque()
        for item in items:
            pending.append(pool.apply_async(fn, (item,)))
            if len(pending) >= max_in_flight:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


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
