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
import contextlib
import multiprocessing as mp
import signal
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterable, Iterator, TypeVar

from long_ctx.common.cli_errors import WorkerDied

T = TypeVar("T")
R = TypeVar("R")


_CAN_BLOCK = hasattr(signal, "pthread_sigmask")


@contextlib.contextmanager
def _ctrl_c_held() -> Iterator[None]:
    """Hold Ctrl-C back while workers may be started: a process started now inherits the block
    and so cannot be interrupted before `_start_worker` ignores SIGINT; this process gets it
    right after."""
    if not _CAN_BLOCK:
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _start_worker(initializer: Callable[..., None] | None, initargs: tuple) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if _CAN_BLOCK:  # (held back while this process was started; now it is ignored)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    # A forked worker inherits the parent's SIGTERM handler (the CLI's, which raises an exception);
    # the pool stops broken workers with SIGTERM, and one that caught it could block forever.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if initializer is not None:
        initializer(*initargs)


def _how_workers_ended(pool: ProcessPoolExecutor) -> str:
    """E.g. " (pid 123: killed by SIGKILL)" for the workers that ended abnormally, if still known."""
    ended = []
    # `_processes` is private but present in every CPython since 3.2; a best-effort detail only.
    processes = dict(getattr(pool, "_processes", None) or {})
    # Let the pool finish stopping the others first: it reaps them, and only then is every
    # exit status known (polling while it reaps can miss one).
    pool.shutdown(wait=True, cancel_futures=True)
    for pid, proc in processes.items():
        code = getattr(proc, "exitcode", None)
        if code is None or code == 0 or code == -signal.SIGTERM:  # SIGTERM: the pool stopping the rest
            continue
        try:
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        except ValueError:
            how = f"killed by signal {-code}"
        ended.append(f"pid {pid}: {how}")
    return f" ({', '.join(ended)})" if ended else ""


def _worker_died(pool: ProcessPoolExecutor) -> WorkerDied:
    return WorkerDied(
        f"a worker process ended abruptly{_how_workers_ended(pool)}, e.g. killed by the out-of-memory "
        "killer, or crashed; the run stopped and its output was not written — free memory or use fewer "
        "workers, then run again"
    )


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
    start_method: str | None = None,
) -> Iterator[R]:
    """Yield fn(item) for every item, in order, using `num_proc` processes (1: in this process).

    `fn` and `initializer` must be importable module-level functions. By default workers are
    never forked from this process (its Arrow/Rust thread pools may be running, and a forked
    copy can hang): they are forked from a fresh fork server that first imports the `preload`
    modules, so expensive set-up done there is paid once and shared. `start_method="fork"` forks
    them from this process instead (faster to start; only for callers that run no threads of
    their own, such as stage 0). Before an item is submitted, the items submitted and not yet
    yielded number fewer than `max_in_flight` and weigh at most `max_weight` in all (`weight(item)`,
    e.g. its bytes; one item heavier than that still goes, alone). Call this under
    `if __name__ == "__main__":` in scripts, as multiprocessing requires.
    """
    if num_proc < 1:
        raise ValueError(f"num_proc must be >= 1, got {num_proc}")
    if start_method not in (None, *mp.get_all_start_methods()):
        raise ValueError(f"start_method must be one of {mp.get_all_start_methods()}, got {start_method!r}")
    if num_proc == 1:
        if initializer is not None:
            initializer(*initargs)
        for item in items:
            yield fn(item)
        return
    max_in_flight = max_in_flight or 2 * num_proc + 2
    if start_method is not None:
        ctx = mp.get_context(start_method)
    elif "forkserver" not in mp.get_all_start_methods():  # Windows
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
            with _ctrl_c_held():  # submit starts the workers (and the fork server) when needed
                pending.append((pool.submit(fn, item), w))  # (raises too once the pool is broken)
            in_flight += w
            while pending and (len(pending) >= max_in_flight
                               or (max_weight is not None and in_flight > max_weight)):
                future, w = pending.popleft()
                in_flight -= w
                yield future.result()
        while pending:
            yield pending.popleft()[0].result()
    except BrokenProcessPool as exc:
        raise _worker_died(pool) from exc
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
