"""How the numbered scripts end on something the user can fix or caused: one line, not a traceback.

- A mistake (a flag, path, device or input to change) ends with `error: ...` and exit status 1.
- Ctrl-C (SIGINT) and SIGTERM end with `interrupted: <what was kept>` and exit status 130 / 143,
  after the atomic outputs in progress removed their temporary files (SIGTERM is turned into an
  exception for that, so `finally` blocks and context managers run as on Ctrl-C).
- Anything else (a bug) keeps its traceback.
"""
from __future__ import annotations

import signal
import sys
from typing import Any, Callable

from long_ctx.common.line_reader import InputFileError


class UsageError(RuntimeError):
    """A flag, device or input the user has to change (e.g. --device cuda without a GPU)."""


class WorkerDied(RuntimeError):
    """A worker process ended abruptly (killed, e.g. by the out-of-memory killer, or crashed)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived; raised in the main thread so cleanup runs as it does on Ctrl-C."""


USER_ERRORS = (UsageError, InputFileError, WorkerDied, FileNotFoundError, FileExistsError, ValueError)


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def run_cli(fn: Callable[..., Any], *args: Any, interrupted: str | Callable[[], str] = "nothing was written") -> Any:
    """Call `fn(*args)`; end with one line on a user error or an interruption.

    `interrupted` says what a stopped run leaves behind (a string, or a function asked at that
    moment, e.g. for the newest checkpoint kept).
    """
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return fn(*args)
    except USER_ERRORS as exc:
        sys.exit(f"error: {exc}")
    except KeyboardInterrupt as exc:
        note = interrupted() if callable(interrupted) else interrupted
        print(f"\ninterrupted: {note}", file=sys.stderr, flush=True)
        sys.exit(143 if isinstance(exc, Terminated) else 130)
    finally:
        signal.signal(signal.SIGTERM, previous)
