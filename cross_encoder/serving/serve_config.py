"""The rerank server's configuration: `ServeConfig` (one field per `cross_encoder/4_serve.py` flag),
its argparse parser and the byte sizes flags accept (`8MB`, `512KiB`, `1048576`)."""
from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass

from cross_encoder.cli_flags import add_model_flags
from long_ctx.common.cli import HelpFormatter

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20, "gi": 2**30, "gib": 2**30}


def parse_size(text: str | int) -> int:
    """Bytes of `8MB` (decimal units: KB = 1000), `8MiB` (binary: KiB = 1024) or a plain integer."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a size; write e.g. 8MB, 512KiB or 1048576")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


def _size_flag(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def default_torch_threads() -> int:
    """One core is left to the event loop, HTTP parsing and tokenization; the model gets the rest."""
    return max(1, (os.cpu_count() or 1) - 1)


@dataclass
class ServeConfig:
    model_file: str
    adapter: str
    host: str = "127.0.0.1"
    port: int = 8080  # 0: any free port (printed at start)
    device: str = "auto"
    precision: str = "auto"
    max_batch_docs: int = 64  # documents per model call, gathered across requests
    max_batch_tokens: int = 32_768  # documents x padded length per forward pass
    max_docs_per_request: int = 1000
    max_request_bytes: int = 8_000_000
    max_queue: int = 256  # requests accepted and not yet answered
    batch_wait_ms: float = 2.0
    served_model_name: str | None = None  # default: the --adapter path
    max_length: int | None = None  # default: the training rows' max_length
    torch_threads: int | None = None  # default: default_torch_threads()
    access_log: bool = False
    log_level: str = "info"

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.adapter

    def validate(self) -> None:
        """Raise ValueError naming the flag when a value cannot work."""
        for flag in ("max_batch_docs", "max_batch_tokens", "max_docs_per_request", "max_request_bytes", "max_queue"):
            if getattr(self, flag) < 1:
                raise ValueError(f"--{flag} must be >= 1, got {getattr(self, flag)}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"--batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be in 0..65535, got {self.port}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"--torch_threads must be >= 1, got {self.torch_threads}")
        if self.max_length is not None and self.max_length < 3:
            raise ValueError(f"--max_length must be >= 3 (question, SEP, CLS), got {self.max_length}")


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    add_model_flags(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (0: any free port, printed at start)")
    p.add_argument("--device", default="auto", help="where the model runs: auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto", help="model weights: auto is fp32 on CPU, bf16 on CUDA")
    p.add_argument("--max_batch_docs", type=int, default=64, help="documents per model call, gathered from concurrent requests (1: no batching)")
    p.add_argument("--max_batch_tokens", type=int, default=32768, help="documents x padded length per forward pass at most (bounds memory)")
    p.add_argument("--max_docs_per_request", type=int, default=1000, help="more documents in one request -> 413")
    p.add_argument("--max_request_bytes", type=_size_flag, default="8MB", help="larger request bodies -> 413, checked before parsing (8MB = 8,000,000 bytes; KiB/MiB are binary)")
    p.add_argument("--max_queue", type=int, default=256, help="requests accepted and not yet answered at most; one more -> 503 with Retry-After")
    p.add_argument("--batch_wait_ms", type=float, default=2.0, help="how long a batch waits for more requests' documents after its first request arrived")
    p.add_argument("--served_model_name", default=None, help="model name in /v1/rerank responses and /info (default: the --adapter path)")
    p.add_argument("--max_length", type=int, default=None, help="row length limit (default: the training rows' max_length)")
    p.add_argument("--torch_threads", type=int, default=None, help=f"intra-op threads of the model worker (default: CPU cores - 1, here {default_torch_threads()})")
    p.add_argument("--access_log", action="store_true", help="log every request (off: faster under load)")
    p.add_argument("--log_level", choices=["critical", "error", "warning", "info", "debug"], default="info", help="server log level")
    return p


def config_from_args(argv: list[str] | None = None, description: str | None = None) -> ServeConfig:
    return ServeConfig(**vars(build_parser(description).parse_args(argv)))
