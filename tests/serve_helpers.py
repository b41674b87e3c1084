"""The rerank server as a real subprocess on a free loopback port (`--port 0`, the port read back
from its first line), for the server tests."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "cross_encoder" / "4_serve.py"
URL_LINE = re.compile(rb"serving .* at (http://127\.0\.0\.1:\d+) ")


class ServerProcess:
    """`python cross_encoder/4_serve.py ... --port 0`, output to a log file (a pipe nobody reads
    could fill up and block the server)."""

    def __init__(self, model_file: Path, adapter: Path, *flags: str) -> None:
        self.log = Path(tempfile.mkstemp(prefix="serve_", suffix=".log")[1])
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, str(SCRIPT), "--model_file", str(model_file), "--adapter", str(adapter),
                 "--host", "127.0.0.1", "--port", "0", "--device", "cpu", "--torch_threads", "1", *flags],
                stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
        self.url: str | None = None
        self.early_health: httpx.Response | None = None  # the first /health answer, while loading
        self.early_rerank: httpx.Response | None = None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120.0) -> "ServerProcess":
        deadline = time.monotonic() + timeout
        while self.url is None:
            m = URL_LINE.search(self.log.read_bytes())
            if m:
                self.url = m.group(1).decode()
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{self.output()}")
            else:
                time.sleep(0.05)
        while True:
            try:
                r = httpx.get(f"{self.url}/health", timeout=5)
            except httpx.TransportError:
                r = None
            if r is not None and self.early_health is None:
                self.early_health = r
                if r.status_code == 503:
                    self.early_rerank = httpx.post(f"{self.url}/rerank", json={"query": "q", "texts": ["d"]})
            if r is not None and r.status_code == 200:
                return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server never became healthy:\n{self.output()}")
            time.sleep(0.1)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def close(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait()
        if self.log.exists():
            os.unlink(self.log)
