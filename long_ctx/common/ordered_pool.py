"""Ordered, memory-bounded parallel map over an iterator, that fails fast when a worker dies.

`multiprocessing.Pool.imap` keeps order but its feeder thread drains the input iterator as fast as
it can, so on a big file the whole input ends up queued in memory; and a `Pool` whose worker is
killed (the out-of-memory killer's SIGKILL) waits forever for the lost task. A
`concurrent.futures` process pool notices most deaths, but not all: a worker killed while it
sends a result leaves the pool's reader waiting for the rest of that message, and the other
workers waiting for the lock the dead one held, forever. So the pool here is our own and shares
nothing between workers: each worker has its own pipe, the main process waits on every pipe and
every worker's exit at once, and a worker's exit, or its pipe closing mid-message, ends the map
within moments with `WorkerDied`.

At most `max_in_flight` tasks (and at most `max_weight` of their summed `weight`, e.g. input
bytes) are outstanding, results come back in submission order. Workers ignore SIGINT: Ctrl-C
reaches the whole process group, and only the main process should react (once, with one line)
while the workers are stopped.
"""
from __future__ import annotations

import collections
import contextlib
import multiprocessing as mp
import queue
import signal
import threading
import traceback
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterable, Iterator, TypeVar

from long_ctx.common.cli import WorkerDied

T = TypeVar("T")
R = TypeVar("R")

#: Tasks sent ahead to each worker: it reads the next while it computes one, so it never idles
#: waiting for the main process.
TASKS_PER_WORKER = 2
#: Seconds a worker gets to exit after the last task before it is terminated.
EXIT_GRACE_S = 5.0

_CAN_BLOCK = hasattr(signal, "pthread_sigmask")


@contextlib.contextmanager
def _ctrl_c_held() -> Iterator[None]:
    """Hold Ctrl-C back while a worker starts: the new process inherits the block and so cannot
    be interrupted before `_start_worker` ignores SIGINT; this process gets it right after."""
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
    # A forked worker inherits the parent's SIGTERM handler (the CLI's, which raises an
    # exception); a worker is stopped with SIGTERM and must simply end.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if initializer is not None:
        initializer(*initargs)


class _RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker (shown as the cause of the re-raised one)."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def _worker_main(conn: Connection, parent_end: Connection | None, fn: Callable, initializer: Callable | None,
                 initargs: tuple) -> None:
    """A worker: run `fn` on each (task id, item) received, send back (id, ok, value, traceback)."""
    if parent_end is not None:  # forked: the main process's end must not stay open here
        parent_end.close()
    _start_worker(initializer, initargs)
    tasks: queue.SimpleQueue = queue.SimpleQueue()

    def read() -> None:  # a thread, so the main process never blocks sending while this computes
        try:
            while (msg := conn.recv()) is not None:
                tasks.put(msg)
        except (EOFError, OSError):  # the main process went away
            pass
        tasks.put(None)

    threading.Thread(target=read, daemon=True).start()
    while (msg := tasks.get()) is not None:
        task_id, item = msg
        try:
            reply = (task_id, True, fn(item), None)
        except Exception as exc:
            reply = (task_id, False, exc, traceback.format_exc())
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return
        except Exception as exc:  # the result or the exception would not pickle
            conn.send((task_id, False, RuntimeError(f"a worker's reply could not be sent back: {exc!r}"),
                       traceback.format_exc()))


class _Worker:
    def __init__(self, ctx, fn: Callable, initializer: Callable | None, initargs: tuple) -> None:
        self.conn, child = ctx.Pipe()
        forked = ctx.get_start_method() == "fork"
        self.proc = ctx.Process(target=_worker_main, args=(child, self.conn if forked else None, fn, initializer,
                                                           initargs), daemon=True)
        with _ctrl_c_held():
            self.proc.start()
        child.close()  # only the worker holds its end: its death closes the pipe
        self.outstanding = 0


class _Pool:
    """`num_proc` workers, tasks sent to the least busy one, replies collected by task id."""

    def __init__(self, ctx, num_proc: int, fn: Callable, initializer: Callable | None, initargs: tuple) -> None:
        self.workers: list[_Worker] = []
        self.unsent: collections.deque[tuple[int, Any]] = collections.deque()
        self.replies: dict[int, tuple[bool, Any, str | None]] = {}
        for _ in range(num_proc):
            self.workers.append(_Worker(ctx, fn, initializer, initargs))

    def submit(self, task_id: int, item: Any) -> None:
        self.unsent.append((task_id, item))
        self._dispatch()

    def _dispatch(self) -> None:
        while self.unsent:
            w = min(self.workers, key=lambda w: w.outstanding)
            if w.outstanding >= TASKS_PER_WORKER:
                return
            try:
                w.conn.send(self.unsent[0])
            except (EOFError, OSError):
                self._died()
            self.unsent.popleft()
            w.outstanding += 1

    def result(self, task_id: int) -> Any:
        while task_id not in self.replies:
            self._collect()
        ok, value, tb = self.replies.pop(task_id)
        if not ok:
            if tb:
                value.__cause__ = _RemoteTraceback(tb)
            raise value
        return value

    def _collect(self) -> None:
        by_conn = {w.conn: w for w in self.workers}
        ready = wait([*by_conn, *(w.proc.sentinel for w in self.workers)])
        for r in ready:
            w = by_conn.get(r)
            if w is None:
                continue
            try:
                task_id, ok, value, tb = w.conn.recv()
            except (EOFError, OSError):  # it died, maybe in the middle of a reply
                self._died()
            self.replies[task_id] = (ok, value, tb)
            w.outstanding -= 1
        if len(ready) > sum(r in by_conn for r in ready):  # a worker's sentinel: it ended
            self._died()
        self._dispatch()

    def _died(self) -> None:
        self.close(graceful=False)
        ended = []
        for w in self.workers:
            code = w.proc.exitcode
            if code is None or code == 0 or code == -signal.SIGTERM:  # SIGTERM: stopped by close()
                continue
            try:
                how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
            except ValueError:
                how = f"killed by signal {-code}"
            ended.append(f"pid {w.proc.pid}: {how}")
        detail = f" ({', '.join(ended)})" if ended else ""
        raise WorkerDied(
            f"a worker process ended abruptly{detail}, e.g. killed by the out-of-memory killer, or crashed; "
            "the run stopped and its output was not written — free memory or use fewer workers, then run again"
        )

    def close(self, graceful: bool) -> None:
        """Stop the workers: after their last task (`graceful`), or at once (an error, Ctrl-C)."""
        for w in self.workers:
            if graceful:
                with contextlib.suppress(OSError):
                    w.conn.send(None)
            elif w.proc.is_alive():
                w.proc.terminate()
        for w in self.workers:
            w.proc.join(EXIT_GRACE_S if graceful else None)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join()
            w.conn.close()


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
    e.g. its bytes; one item heavier than that still goes, alone). An exception raised by `fn`
    is re-raised here (its worker traceback as the cause); a worker that dies raises
    `WorkerDied`. Call this under `if __name__ == "__main__":` in scripts, as multiprocessing
    requires.
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
    pool: _Pool | None = None
    pending: collections.deque[tuple[int, int]] = collections.deque()  # (task id, weight)
    in_flight = 0
    graceful = False
    try:
        for task_id, item in enumerate(items):
            if pool is None:  # started with the first item: an empty input costs nothing
                pool = _Pool(ctx, num_proc, fn, initializer, initargs)
            w = weight(item) if weight is not None else 0
            pool.submit(task_id, item)
            pending.append((task_id, w))
            in_flight += w
            while pending and (len(pending) >= max_in_flight
                               or (max_weight is not None and in_flight > max_weight)):
                done, w = pending.popleft()
                in_flight -= w
                yield pool.result(done)
        while pending:
            yield pool.result(pending.popleft()[0])
        graceful = True
    finally:
        # Also on an exception, Ctrl-C or the consumer stopping early: no worker outlives the map.
        if pool is not None:
            pool.close(graceful)


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
