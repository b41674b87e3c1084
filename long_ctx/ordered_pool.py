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
) -> Iterator[R]:
    """Yield fn(item) for every item, in order, using `num_proc` processes (1: in this process).

    `fn` and `initializer` must be importable module-level functions: workers are spawned, not
    forked, because forking a process whose Arrow/Rust thread pools are already running can hang.
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
    with mp.get_context("spawn").Pool(num_proc, initializer=initializer) as pool:
        pending: collections.deque = collections.deque()
        for item in items:
            pending.append(pool.apply_async(fn, (item,)))
            if len(pending) >= max_in_flight:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
