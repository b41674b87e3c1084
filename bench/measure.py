"""Shared by the bench scripts: run one case in a fresh process and measure its time and peak memory.

A fresh process per case makes its peak memory its own (nothing left over from an earlier case):
VmHWM is reset before the measured calls, so "peak RSS increase" = VmHWM - RSS before them = the
memory those calls needed. With `mmap_all` every block of 64 KiB or more is mmap'd, so that freed
memory leaves RSS at once (exact increases, but every such allocation then page-faults afresh,
which slows short inputs more than long ones); without it glibc's defaults apply, as for a user.

`run_isolated(threads, fn, *args)` runs fn(*args) in a fresh process and returns its dict.
`run_budgeted(...)` does the same under a wall-time and an RSS budget, watched from the parent:
a case that passes either is killed and comes back as {"skipped": reason} instead of crashing
the benchmark (or the machine).
"""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import time
import traceback
from typing import Any, Callable

M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
POLL_S = 0.2


def init_child(threads: int, mmap_all: bool = True) -> None:
    """Per case process: fixed thread count; with `mmap_all` large blocks are mmap'd so that freed
    memory leaves RSS, which makes peak RSS minus baseline the memory a step really needed."""
    if mmap_all:
        try:
            ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 1 << 16)
        except OSError:
            pass
    import torch

    if threads:
        torch.set_num_threads(threads)


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM (peak RSS) to the current RSS
        return True
    except OSError:
        return False


def status_kib(field: str, pid: int | str = "self") -> int:
    """A field of /proc/<pid>/status in KiB (0 when absent or the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def timed(step: Callable[[], Any], reps: int, warmup: Callable[[], Any] | None = None,
          max_timed_s: float = float("inf")) -> dict:
    """Median wall and CPU seconds per call, peak RSS increase (MiB) and the number of calls timed.

    One warm-up call first, then up to `reps` timed calls; no more once `max_timed_s` of timed
    calls have run (at least one always does). The increase is over the RSS before the warm-up
    (so parameter gradients a step allocates count); the peak covers warm-up and timed calls, or
    only the timed calls when a separate (e.g. shorter, cheaper) `warmup` is given. CPU seconds
    (all threads of this process) are what a single-threaded case costs however busy the machine
    is; wall seconds also count the time other processes held the cores.
    """
    base = status_kib("VmRSS")
    has_peak = reset_peak()
    (warmup or step)()
    if warmup is not None:
        reset_peak()
    walls: list[float] = []
    cpus: list[float] = []
    while len(walls) < reps and sum(walls) < max_timed_s:
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    peak = (status_kib("VmHWM") - base) / 1024 if has_peak else float("nan")
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return {"sec": median(walls), "cpu_sec": median(cpus), "peak": peak, "calls": len(walls)}


def _die_with_parent() -> None:
    """Linux: SIGKILL this case when its parent (the fork server, which exits with the benchmark)
    goes, so a benchmark killed mid-run leaves no case running."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):
        pass


def timed_alternating(steps: list[Callable[[], Any]], reps: int, warmups: list[Callable[[], Any]],
                      max_timed_s: float = float("inf")) -> list[dict]:
    """Like `timed` for several steps at once, their calls interleaved (a, b, a, b, ...): a ratio of
    two of them then compares calls that saw the machine alike. Up to `reps` calls each, fewer once
    `max_timed_s` per step were timed (at least one each). No memory: see `timed`."""
    for warm in warmups:
        warm()
    walls: list[list[float]] = [[] for _ in steps]
    cpus: list[list[float]] = [[] for _ in steps]
    while len(walls[0]) < reps and sum(map(sum, walls)) < max_timed_s * len(steps):
        for i, step in enumerate(steps):
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            walls[i].append(time.perf_counter() - t0)
            cpus[i].append(time.process_time() - c0)
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return [{"sec": median(w), "cpu_sec": median(c), "calls": len(w)} for w, c in zip(walls, cpus)]


def _child(conn, threads: int, mmap_all: bool, fn: Callable[..., dict], args: tuple) -> None:
    _die_with_parent()
    init_child(threads, mmap_all)
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which decides
        name = type(err).__name__
        if "OutOfMemory" in name:
            conn.send(("skipped", f"out of memory ({name})"))
        else:
            conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


PRELOAD = ["torch"]


def _context() -> mp.context.BaseContext:
    """Processes forked from a server that has imported PRELOAD (torch; a script may add modules
    before its first case): each case starts in a fresh address space, allocates nothing an
    earlier case did, and does not pay seconds of imports again."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def run_budgeted(threads: int, fn: Callable[..., dict], args: tuple = (), time_budget_s: float = float("inf"),
                 mem_budget_mib: float = float("inf"), mmap_all: bool = True) -> dict:
    """fn(*args) in a fresh (spawned) process under budgets -> its dict, or {"skipped": reason}.

    The parent polls the child's RSS and the clock; past either budget the child is killed. A
    child that dies on its own (e.g. the kernel's OOM killer) is reported as skipped with its exit
    code -9; any other death, or an exception in fn, is raised here (a bug, not a budget).
    """
    ctx = _context()
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, threads, mmap_all, fn, args), daemon=True)
    t0 = time.perf_counter()
    proc.start()
    send.close()
    peak_rss = 0.0
    try:
        while True:
            if recv.poll(POLL_S):
                try:
                    kind, payload = recv.recv()
                except EOFError:
                    kind, payload = "died", None
                break
            peak_rss = max(peak_rss, status_kib("VmRSS", proc.pid) / 1024)
            elapsed = time.perf_counter() - t0
            if peak_rss > mem_budget_mib:
                return {"skipped": f"RSS passed the memory budget of {mem_budget_mib:.0f} MiB"}
            if elapsed > time_budget_s:
                return {"skipped": f"ran past the time budget of {time_budget_s:.0f} s"}
            if not proc.is_alive() and not recv.poll(0):
                kind, payload = "died", None
                break
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
        recv.close()
    if kind == "ok":
        return payload
    if kind == "skipped":
        return {"skipped": payload}
    if kind == "died" and proc.exitcode == -9:
        return {"skipped": "process was killed (SIGKILL: the kernel's OOM killer?)"}
    if kind == "died":
        raise RuntimeError(f"benchmark case process exited with code {proc.exitcode} without a result")
    raise RuntimeError(f"benchmark case failed in its process:\n{payload}")


def run_isolated(threads: int, fn: Callable[..., dict], *args) -> dict:
    """fn(*args) in a fresh process, no budgets."""
    return run_budgeted(threads, fn, args)


def machine_load() -> str:
    """'load average 1.2 / 0.9 / 0.7 (1/5/15 min) on N CPUs' for the results files."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load average unknown"
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min) on {os.cpu_count()} CPUs"
