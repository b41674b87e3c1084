"""The numbered scripts' command lines: flags defined next to their config fields, and how a
script ends on something the user can fix or caused — one line, not a traceback.

Flags: a config dataclass declares each field with `flag(default, help, ...)`; `parse_config`
builds the argparse parser from the fields (`--<field>`; bools as `--x/--no-x`, lists as
`nargs="+"`), so `--help`, the Python API and the recorded config can never disagree.

Endings:

- A mistake (a flag, path, device or input to change) ends with `error: ...` and exit status 1.
- Ctrl-C (SIGINT) and SIGTERM end with `interrupted: <what was kept>` and exit status 130 / 143,
  after the atomic outputs in progress removed their temporary files (SIGTERM is turned into an
  exception for that, so `finally` blocks and context managers run as on Ctrl-C).
- Anything else (a bug) keeps its traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import types
from typing import Any, Callable, Union, get_args, get_origin, get_type_hints

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


# ---------------------------------------------------------------------------------------------
# Flags from dataclass fields


def flag(default: Any, help: str, **argparse_kwargs: Any) -> Any:
    """A config field that is also a command-line flag. Extra keywords go to `add_argument`
    (`choices`, `required`, `type`, ...); `cli_name` names the flag when it is not the field's
    name (e.g. `cli_name="no_progress", action="store_false"` for a field `progress`)."""
    meta = {"help": help, **argparse_kwargs}
    if isinstance(default, (list, tuple)):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown (except None ones, whose help says what they mean); the description as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return action.help
        return super()._get_help_string(action)


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per field of the dataclass `cls` that was made by `flag` (others are skipped)."""
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue  # not a command-line flag
        kwargs: dict[str, Any] = dict(f.metadata)
        name = kwargs.pop("cli_name", f.name)
        if f.default is not dataclasses.MISSING and not kwargs.get("required"):
            kwargs["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            kwargs["default"] = f.default_factory()  # type: ignore[misc]
        if "action" not in kwargs:
            typ = hints[f.name]
            # `int | None` -> int; `list[str]` stays list[str].
            is_union = get_origin(typ) in (Union, types.UnionType)
            base_t = [a for a in get_args(typ) if a is not type(None)][0] if is_union else typ
            if base_t is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            elif get_origin(base_t) is list:
                kwargs.update(nargs="+", type=kwargs.get("type", get_args(base_t)[0]))
            else:
                kwargs.setdefault("type", base_t)
        parser.add_argument(f"--{name}", dest=f.name, **kwargs)


def config_parser(cls: type, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one flag per field of the dataclass `cls` (fields made by `flag`)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    add_config_flags(parser, cls)
    return parser


def parse_config(cls: type, argv: list[str] | None = None, description: str | None = None) -> Any:
    """Parse the command line into an instance of the dataclass `cls`."""
    return cls(**vars(config_parser(cls, description).parse_args(argv)))
