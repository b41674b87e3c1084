"""Progress bars that suit where they are written to.

On a terminal: a tqdm bar. Written to a file or a pipe (CI logs, `nohup`, `> log`), a bar's
carriage-return updates pile up (hundreds of kB for a short training run), so there the same
calls print one plain line at most every `log_interval_s` seconds, plus a last line at the end.
Every script uses `progress_bar` instead of `tqdm` directly.
"""
from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

LOG_INTERVAL_S = 30.0


class LineProgress:
    """The part of tqdm's interface the scripts use, printing newline-terminated lines."""

    def __init__(self, total: float | None = None, desc: str = "", unit: str = "it", initial: float = 0,
                 unit_scale: bool = False, unit_divisor: int = 1000, file: TextIO | None = None,
                 log_interval_s: float = LOG_INTERVAL_S) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.unit_scale, self.unit_divisor = unit_scale, unit_divisor
        self.n = initial
        self.initial = initial
        self.file = file if file is not None else sys.stderr
        self.interval = log_interval_s
        self.disable = False
        self._postfix = ""
        self._start = time.monotonic()
        self._last = self._start
        self._closed = False

    def update(self, n: float = 1) -> None:
        self.n += n
        self._maybe_print()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self._postfix = ", ".join(f"{k}={v}" for k, v in items.items())
        self._maybe_print()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self._postfix = str(s)
        self._maybe_print()

    def refresh(self) -> None:
        self._maybe_print()

    def _maybe_print(self) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._print(now)

    def _print(self, now: float) -> None:
        self._last = now
        line = tqdm.format_meter(
            n=self.n, total=self.total, elapsed=now - self._start, prefix=self.desc, unit=self.unit,
            unit_scale=self.unit_scale, unit_divisor=self.unit_divisor, postfix=self._postfix or None,
            ascii=True, ncols=100, initial=self.initial)
        print(line, file=self.file, flush=True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._print(time.monotonic())

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        # A run that failed or was interrupted ends with its one error line, not a progress line.
        if exc_type is None:
            self.close()
        else:
            self._closed = True


def progress_bar(total: float | None = None, desc: str = "", unit: str = "it", disable: bool = False,
                 initial: float = 0, unit_scale: bool = False, unit_divisor: int = 1000,
                 file: TextIO | None = None, log_interval_s: float = LOG_INTERVAL_S, **tqdm_kwargs: Any):
    """A tqdm bar on a terminal, a `LineProgress` elsewhere, an inert tqdm when `disable`."""
    stream = file if file is not None else sys.stderr
    is_tty = getattr(stream, "isatty", lambda: False)()
    if disable or is_tty:
        return tqdm(total=total, desc=desc, unit=unit, disable=disable, initial=initial, unit_scale=unit_scale,
                    unit_divisor=unit_divisor, file=stream, **tqdm_kwargs)
    return LineProgress(total=total, desc=desc, unit=unit, initial=initial, unit_scale=unit_scale,
                        unit_divisor=unit_divisor, file=stream, log_interval_s=log_interval_s)
