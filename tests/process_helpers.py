"""Real processes and signals for the data-stage tests: start a script in its own process group,
find its worker processes (Linux /proc), wait for a moment in its run, send Ctrl-C / SIGTERM /
SIGKILL, and read what it printed."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import zstandard

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "nq_sample.jsonl.zst"


def start(script: str, *args, cwd: Path) -> subprocess.Popen:
    """Run `long_ctx/<script>` in a new session (its own process group, like a shell job)."""
    return subprocess.Popen([sys.executable, str(REPO / "long_ctx" / script), *map(str, args)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def run(script: str, *args, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "long_ctx" / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(name))
    return kids


def worker_pids(pid: int) -> list[int]:
    """Pool workers of process `pid`: its descendants that have no children of their own, other
    than multiprocessing's resource tracker (forked workers are children, fork-server workers
    grandchildren)."""
    kids = _children()
    found, todo = [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            todo.append(child)
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if child not in kids and b"resource_tracker" not in cmdline:
                found.append(child)
    return sorted(found)


def wait_until(condition: Callable[[], bool], proc: subprocess.Popen, timeout: float = 60) -> None:
    """Poll until `condition()`; fails if `proc` ends first (it finished before the moment sought)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) too early:\n{proc.stderr.read()}"
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def finish(proc: subprocess.Popen, timeout: float = 30) -> tuple[int, str, str, float]:
    """(exit status, stdout, stderr, seconds it took to end)."""
    start_t = time.monotonic()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"the process hung for {timeout} s:\n{err}") from None
    return proc.returncode, out, err, time.monotonic() - start_t


def temps_beside(path: Path) -> list[Path]:
    """Hidden temporary copies of `path` (`.NAME.*`) in its folder."""
    return sorted(path.parent.glob(f".{path.name}.*"))


def dead_pid() -> int:
    """The id of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def repeated_sample(path: Path, copies: int) -> Path:
    """The bundled sample's lines `copies` times over, as plain .jsonl (a run long enough to interrupt)."""
    data = zstandard.ZstdDecompressor().decompress(SAMPLE.read_bytes(), max_output_size=1 << 30)
    path.write_bytes(data * copies)
    return path


def one_error_line(stderr: str, prefix: str = "error: ") -> str:
    """The single line of `stderr`, which must start with `prefix` (no traceback, nothing else)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(prefix), stderr
    assert "Traceback" not in stderr
    return lines[0]
