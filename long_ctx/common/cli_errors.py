"""How the numbered scripts end on a mistake the user can fix: one line `error: ...` and exit
status 1, not a traceback. Anything else (a bug) keeps its traceback."""
from __future__ import annotations

import sys
from typing import Any, Callable

from long_ctx.common.line_reader import InputFileError


class UsageError(RuntimeError):
    """A flag, device or input the user has to change (e.g. --device cuda without a GPU)."""


USER_ERRORS = (UsageError, InputFileError, FileNotFoundError, FileExistsError, ValueError)


def run_cli(fn: Callable[..., Any], *args: Any) -> Any:
    """Call `fn(*args)`; exit with its message when it raises one of USER_ERRORS."""
    try:
        return fn(*args)
    except USER_ERRORS as exc:
        sys.exit(f"error: {exc}")
